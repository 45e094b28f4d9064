"""Pre- and post-processing of the live pipeline, and the NumPy twins of the CUDA kernels.

Every function below the "twins" line defines, in float32 arithmetic written in the same order as
``kernels/cuda/preprocess.cu``, what one CUDA kernel computes; ``apps.cuda_kernels`` runs the same
maths on the GPU and the tests hold the two (and ``tdfusion_edge.imaging``) to each other.

The data path: each native frame → luminance Y in [0,1] (+ Cr/Cb for colour, 0–255 scale, neutral
128) exactly as ``imaging.luma_and_chroma`` defines them → one bilinear warp into the processing
grid (registration homography and resize/letterbox in a single resampling) → fusion → optional
min–max stretch → 8-bit and chroma re-attached to BGR (``imaging.compose_output``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tdfusion_edge.imaging import luma_and_chroma

log = logging.getLogger(__name__)

NEUTRAL = np.float32(128.0)
THERMAL_PCT = (0.5, 99.5)  # the robust range of imaging.normalize_thermal
# OpenCV's float BGR↔YCrCb coefficients (cvtColor on float images).
KB, KG, KR, KCR, KCB = (np.float32(v) for v in (0.114, 0.587, 0.299, 0.713, 0.564))
CR2R, CR2G, CB2G, CB2B = (np.float32(v) for v in (1.403, -0.714, -0.344, 1.773))


@dataclass
class Planes:
    """Luminance (float32 H×W in [0,1]) and optional chroma (float32 H×W×2: Cr, Cb; 0–255, neutral 128)."""

    y: np.ndarray
    crcb: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# Geometry: where the processing grid samples each source
# --------------------------------------------------------------------------------------------
def letterbox_matrix(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """3×3 map from source pixel to processing-grid pixel: uniform scale, centred, pixel-centre exact.

    The content rectangle has integer size and offset so that its border pixels sample strictly
    inside the source (no blending with the padding)."""
    oy, y1, ox, x1 = content_box(src_hw, dst_hw)
    sx, sy = (x1 - ox) / src_hw[1], (y1 - oy) / src_hw[0]
    return np.array([[sx, 0, 0.5 * sx - 0.5 + ox], [0, sy, 0.5 * sy - 0.5 + oy], [0, 0, 1]], np.float64)


def content_box(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rows and columns (y0, y1, x0, x1) of the grid that ``letterbox_matrix`` fills with the image."""
    sh, sw = src_hw
    dh, dw = dst_hw
    s = min(dw / sw, dh / sh)
    nw, nh = max(1, round(sw * s)), max(1, round(sh * s))
    ox, oy = (dw - nw) // 2, (dh - nh) // 2
    return oy, oy + nh, ox, ox + nw


def sampling_matrix(to_grid: np.ndarray) -> np.ndarray:
    """The inverse (grid pixel → source pixel), normalised, as the float32 the kernels receive."""
    inv = np.linalg.inv(np.asarray(to_grid, np.float64))
    return (inv / inv[2, 2]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# NumPy twins of the CUDA kernels (one function per kernel)
# --------------------------------------------------------------------------------------------
def luma_chroma_bgr8(bgr: np.ndarray) -> Planes:
    """Kernel ``luma_chroma_bgr8``: 8-bit BGR → Y/255 and Cr, Cb (OpenCV float YCrCb, neutral 128)."""
    b, g, r = (bgr[:, :, c].astype(np.float32) for c in range(3))
    y = b * KB + g * KG + r * KR
    cr = (r - y) * KCR + NEUTRAL
    cb = (b - y) * KCB + NEUTRAL
    return Planes(y / np.float32(255.0), np.stack([cr, cb], axis=2))


def luma_gray8(gray: np.ndarray) -> np.ndarray:
    """Kernel ``luma_gray8``: 8-bit gray → [0,1]."""
    return gray.astype(np.float32) / np.float32(255.0)


def histogram_u16(raw: np.ndarray) -> np.ndarray:
    """Kernel ``histogram_u16``: 65536-bin histogram of 16-bit counts."""
    return np.bincount(raw.ravel(), minlength=65536).astype(np.int64)


def percentiles_from_histogram(hist: np.ndarray, pcts=THERMAL_PCT) -> tuple[float, float]:
    """Host step after ``histogram_u16``: the same values as ``np.percentile`` (linear) of the data."""
    cum = np.cumsum(hist)
    n = int(cum[-1])
    out = []
    for p in pcts:
        virtual = (p / 100.0) * (n - 1)
        below = int(np.floor(virtual))
        gamma = virtual - below
        above = min(below + 1, n - 1)
        a = float(np.searchsorted(cum, below, side="right"))
        b = float(np.searchsorted(cum, above, side="right"))
        # numpy's _lerp: interpolate from the nearer end, so the result is exact at both ends.
        out.append(b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma)
    return out[0], out[1]


def normalize_u16(raw: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Kernel ``normalize_u16``: clip((x − lo) / (hi − lo), 0, 1); a flat frame becomes mid-grey."""
    if hi <= lo:
        return np.full(raw.shape, 0.5, np.float32)
    rng = np.float32(hi - lo)
    return np.clip((raw.astype(np.float32) - np.float32(lo)) / rng, np.float32(0), np.float32(1))


class WarpPlan:
    """Kernel ``warp_bilinear_f32``: out(x, y) = bilinear sample of src at M·(x, y, 1) (perspective
    divide). Inside the source's pixel footprint [-0.5, W-0.5]×[-0.5, H-0.5] the four neighbours
    are clamped to the image (OpenCV's resize at the edges); outside, the fill value. The sampling
    positions depend only on the matrix and sizes, so a plan is built once per stream."""

    def __init__(self, m_inv: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]):
        m = np.asarray(m_inv, np.float32).ravel()
        sh, sw = src_hw
        dh, dw = dst_hw
        x = np.arange(dw, dtype=np.float32)[None, :]
        y = np.arange(dh, dtype=np.float32)[:, None]
        u = m[0] * x + m[1] * y + m[2]
        v = m[3] * x + m[4] * y + m[5]
        w = m[6] * x + m[7] * y + m[8]
        with np.errstate(divide="ignore", invalid="ignore"):
            sx, sy = u / w, v / w
        self.valid = ((w > 0) & (sx >= np.float32(-0.5)) & (sx <= np.float32(sw - 0.5))
                      & (sy >= np.float32(-0.5)) & (sy <= np.float32(sh - 0.5)))
        sx = np.where(self.valid, sx, np.float32(0))
        sy = np.where(self.valid, sy, np.float32(0))
        x0, y0 = np.floor(sx), np.floor(sy)
        self.fx, self.fy = (sx - x0).astype(np.float32), (sy - y0).astype(np.float32)
        x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
        xa, xb = np.clip(x0i, 0, sw - 1), np.clip(x0i + 1, 0, sw - 1)
        ya, yb = np.clip(y0i, 0, sh - 1), np.clip(y0i + 1, 0, sh - 1)
        self.idx = [ya * sw + xa, ya * sw + xb, yb * sw + xa, yb * sw + xb]
        self.src_hw, self.dst_hw = (sh, sw), (dh, dw)

    def apply(self, src: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Warp a float32 H×W or H×W×C image."""
        if src.shape[:2] != self.src_hw:
            raise ValueError(f"plan made for {self.src_hw}, image is {src.shape[:2]}")
        if src.ndim == 3:  # plane by plane: gathering from one contiguous plane is ~5× faster
            return np.stack([self._plane(np.ascontiguousarray(src[:, :, c]), fill) for c in range(src.shape[2])], 2)
        return self._plane(src, fill)

    def _plane(self, src: np.ndarray, fill: float) -> np.ndarray:
        flat = src.astype(np.float32, copy=False).ravel()
        p00, p01, p10, p11 = (flat[i] for i in self.idx)
        one, fx, fy = np.float32(1), self.fx, self.fy
        out = (one - fy) * ((one - fx) * p00 + fx * p01) + fy * ((one - fx) * p10 + fx * p11)
        return np.where(self.valid, out, np.float32(fill))


def warp_bilinear(src: np.ndarray, m_inv: np.ndarray, dst_hw: tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """One-off ``warp_bilinear_f32`` (the pipeline keeps the plan instead)."""
    return WarpPlan(m_inv, src.shape[:2], dst_hw).apply(src, fill)


def merge_chroma(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kernel ``merge_chroma``: per channel, weight each source by its distance from neutral."""
    da, db = np.abs(a - NEUTRAL), np.abs(b - NEUTRAL)
    return (a * da + b * db) / (da + db + np.float32(1e-4))


def minmax_range(y: np.ndarray) -> tuple[np.float32, np.float32]:
    """Kernel ``minmax_f32`` + host step: (min, max − min) as float32, the stretch parameters."""
    lo, hi = float(y.min()), float(y.max())
    return np.float32(lo), np.float32(hi - lo)


def compose_bgr8(y: np.ndarray, crcb: np.ndarray | None, lo: float = 0.0, rng: float = 1.0,
                 stretch: bool = False) -> np.ndarray:
    """Kernel ``compose_bgr8``: optional stretch (y − lo) / rng, ×255 rounded, then YCrCb → BGR
    (OpenCV float coefficients); gray (no chroma) is written to all three channels."""
    y = y.astype(np.float32, copy=False)
    if stretch:
        y = (y - np.float32(lo)) / np.float32(rng) if rng > 0 else np.zeros_like(y)
    yq = np.round(np.clip(y, np.float32(0), np.float32(1)) * np.float32(255.0))
    if crcb is None:
        return np.repeat(yq.astype(np.uint8)[:, :, None], 3, axis=2)
    cr, cb = crcb[:, :, 0] - NEUTRAL, crcb[:, :, 1] - NEUTRAL
    b = yq + cb * CB2B
    g = yq + cb * CB2G + cr * CR2G
    r = yq + cr * CR2R
    bgr = np.stack([b, g, r], axis=2)
    return np.round(np.clip(bgr, np.float32(0), np.float32(255))).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The CPU pre-processor (the twins, with warp plans cached per stream)
# --------------------------------------------------------------------------------------------
def is_colour(img: np.ndarray, tolerance: int = 6) -> bool:
    """Three channels that really differ. Gray sent as BGR (USB thermal cameras) or decoded from a
    compressed video (codec noise of a few levels) counts as gray; checked on a sparse grid."""
    if img.ndim != 3:
        return False
    sample = img[::4, ::4].astype(np.int32)
    spread = np.abs(sample[:, :, 0] - sample[:, :, 1]).max(), np.abs(sample[:, :, 1] - sample[:, :, 2]).max()
    return bool(max(spread) > tolerance * (256 if img.dtype == np.uint16 else 1))


class CpuPreprocessor:
    """Pre/post-processing with NumPy/OpenCV; the reference the CUDA version must match.
    Unlike ``imaging.luma_and_chroma``, near-gray BGR frames (see ``is_colour``) carry no chroma."""

    name = "numpy"

    def __init__(self) -> None:
        self._plans: dict[tuple, WarpPlan] = {}

    def to_planes(self, raw: np.ndarray) -> Planes:
        """Native-resolution luminance/chroma, as ``imaging.luma_and_chroma`` defines them."""
        if raw.dtype == np.uint8 and raw.ndim == 2:
            return Planes(luma_gray8(raw))
        if raw.dtype == np.uint8 and raw.ndim == 3:
            planes = luma_chroma_bgr8(raw)
            return planes if is_colour(raw) else Planes(planes.y)
        if raw.dtype == np.uint16 and (raw.ndim == 2 or not is_colour(raw)):
            gray = raw if raw.ndim == 2 else raw[:, :, 0]
            return Planes(normalize_u16(gray, *percentiles_from_histogram(histogram_u16(gray))))
        if raw.dtype == np.uint16:  # 16-bit colour: rare enough to use the library function as is
            return Planes(*luma_and_chroma(raw))
        raise ValueError(f"unsupported frame type {raw.dtype} with shape {raw.shape}")

    def _plan(self, m_inv: np.ndarray, src_hw, dst_hw) -> WarpPlan:
        key = (np.asarray(m_inv, np.float32).tobytes(), tuple(src_hw), tuple(dst_hw))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 8:  # a stream changed size repeatedly; do not grow without bound
                self._plans.clear()
            plan = self._plans[key] = WarpPlan(m_inv, src_hw, dst_hw)
        return plan

    def planes(self, raw: np.ndarray, m_inv: np.ndarray, dst_hw: tuple[int, int]) -> Planes:
        """Convert ``raw`` and resample it into the processing grid (``m_inv``: grid → source)."""
        p = self.to_planes(raw)
        if p.y.shape == tuple(dst_hw) and np.array_equal(np.asarray(m_inv, np.float32), np.eye(3, dtype=np.float32)):
            return p
        plan = self._plan(m_inv, p.y.shape, dst_hw)
        crcb = None if p.crcb is None else plan.apply(p.crcb, float(NEUTRAL))
        return Planes(plan.apply(p.y), crcb)

    def merge_chroma(self, a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        if a is None or b is None:
            return b if a is None else a
        return merge_chroma(a, b)

    def compose(self, y: np.ndarray, crcb: np.ndarray | None, stretch: bool) -> np.ndarray:
        """Fused luminance (+ chroma) → 8-bit BGR."""
        lo, rng = minmax_range(y) if stretch else (np.float32(0), np.float32(1))
        return compose_bgr8(y, crcb, lo, rng, stretch)

    def close(self) -> None:
        self._plans.clear()


def create_preprocessor(kind: str = "auto"):
    """'numpy', 'cuda' (pycuda, else CuPy), 'pycuda', 'cupy', or 'auto' (CUDA when usable)."""
    if kind == "numpy":
        return CpuPreprocessor()
    from . import cuda_kernels
    if kind == "auto":
        try:
            return cuda_kernels.CudaPreprocessor("auto")
        except cuda_kernels.CudaUnavailable as exc:
            # Said at DEBUG only: every CPU-only run would repeat it; `tdfusion-edge info` reports it once.
            log.debug("pre-processing on the CPU (%s)", exc)
            return CpuPreprocessor()
    return cuda_kernels.CudaPreprocessor("auto" if kind == "cuda" else kind)
