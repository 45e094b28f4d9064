"""IR → visible registration: a 3×3 homography, its file format, checks, and estimation.

The homography maps IR pixel coordinates to visible pixel coordinates at the cameras' native
resolutions (OpenCV's convention: integer coordinates are pixel centres). Files are YAML or JSON::

    homography: [[h11, h12, h13], [h21, h22, h23], [h31, h32, h33]]
    ir_size: [width, height]          # optional, checked against the stream
    vis_size: [width, height]         # optional
    rms_error_px: 0.8                 # written by `tdfusion-edge calibrate`

OpenCV FileStorage YAML (``%YAML:1.0`` with an ``!!opencv-matrix`` named ``homography`` or ``H``)
is read too.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.validation.homography import HomographyFileError, load_homography_file


class RegistrationError(TDFusionError):
    """A homography that is unreadable, degenerate, or cannot be estimated."""


@dataclass
class Homography:
    """IR → visible mapping with the image sizes it was made for (width, height) when known."""

    matrix: np.ndarray
    ir_size: tuple[int, int] | None = None
    vis_size: tuple[int, int] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape != (3, 3):
            raise RegistrationError(f"a homography is 3×3; got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise RegistrationError("homography contains NaN or infinite values")
        if abs(m[2, 2]) < 1e-12:
            raise RegistrationError("homography is degenerate: h33 is 0 (it sends the origin to infinity)")
        self.matrix = m / m[2, 2]

    @classmethod
    def identity(cls) -> "Homography":
        return cls(np.eye(3))

    @classmethod
    def scaling(cls, ir_size: tuple[int, int], vis_size: tuple[int, int]) -> "Homography":
        """Co-aligned cameras with different resolutions: stretch the IR frame onto the visible one."""
        sx, sy = vis_size[0] / ir_size[0], vis_size[1] / ir_size[1]
        # Pixel-centre convention: x_vis + 0.5 = sx (x_ir + 0.5).
        m = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        return cls(m, ir_size, vis_size, {"method": "scale (no calibration)"})

    def apply(self, pts: np.ndarray) -> np.ndarray:
        """Map N×2 IR points to visible coordinates."""
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        hom = np.c_[pts, np.ones(len(pts))] @ self.matrix.T
        return hom[:, :2] / hom[:, 2:3]

    def to_dict(self) -> dict:
        out: dict = {"homography": [[float(v) for v in row] for row in self.matrix]}
        if self.ir_size:
            out["ir_size"] = list(self.ir_size)
        if self.vis_size:
            out["vis_size"] = list(self.vis_size)
        out.update(self.info)
        return out


def save_homography(h: Homography, path: str | os.PathLike) -> Path:
    """Write YAML (``.yaml``/``.yml``) or JSON (anything else)."""
    from tdfusion_edge.validation.output_path import atomic_write_text

    path = Path(path)
    data = h.to_dict()
    if path.suffix.lower() in (".yaml", ".yml"):
        text = ("# IR -> visible homography (pixel coordinates), written by tdfusion-edge calibrate\n"
                + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
    else:
        text = json.dumps(data, indent=2) + "\n"
    return atomic_write_text(path, text)  # a killed save never leaves half a homography


def load_homography(path: str | os.PathLike) -> Homography:
    """Read a homography file (YAML, JSON or OpenCV FileStorage YAML) through the checked loader of
    ``tdfusion_edge.validation.homography``; one-line errors for bad files."""
    try:
        data = load_homography_file(path)
        return Homography(data.matrix, data.ir_size, data.vis_size, data.info)
    except HomographyFileError as exc:
        raise RegistrationError(str(exc)) from None


def check_homography(h: Homography, ir_size: tuple[int, int], vis_size: tuple[int, int]) -> list[str]:
    """Reject a homography that cannot be a real camera pair; returns warnings for doubtful ones.

    Sizes are (width, height). Raises RegistrationError with the reason when degenerate.
    """
    m = h.matrix
    w, hh = ir_size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, hh - 1], [0, hh - 1]], np.float64)
    denom = np.c_[corners, np.ones(4)] @ m[2]
    if np.any(denom <= 1e-9):
        raise RegistrationError("homography is degenerate: it sends part of the IR image to infinity "
                                "(or behind the camera); were the point pairs swapped or mistyped?")
    if abs(np.linalg.det(m)) < 1e-12:
        raise RegistrationError("homography is degenerate: singular matrix (points collinear or repeated?)")
    quad = h.apply(corners)
    if not _is_convex(quad):
        raise RegistrationError("homography is degenerate: the IR image maps to a folded or self-intersecting "
                                "shape (points given in inconsistent order?)")
    area = abs(cv2.contourArea(quad.astype(np.float32)))
    vis_area = float(vis_size[0] * vis_size[1])
    if area < 1e-3 * vis_area:
        raise RegistrationError(f"homography is degenerate: the IR image shrinks to {area:.1f} px² in the visible frame")
    warnings = []
    if area > 1e3 * vis_area:
        warnings.append(f"the IR image maps to {area / vis_area:.0f}× the visible frame's area; check the calibration")
    inter = _overlap_fraction(quad, vis_size)
    if inter <= 0.0:
        raise RegistrationError("homography maps the IR image entirely outside the visible frame")
    if inter < 0.25:
        warnings.append(f"only {inter:.0%} of the visible frame is covered by the IR image")
    if h.ir_size and tuple(h.ir_size) != tuple(ir_size):
        warnings.append(f"homography was made for IR {h.ir_size[0]}x{h.ir_size[1]}, stream is {ir_size[0]}x{ir_size[1]}")
    if h.vis_size and tuple(h.vis_size) != tuple(vis_size):
        warnings.append(f"homography was made for visible {h.vis_size[0]}x{h.vis_size[1]}, "
                        f"stream is {vis_size[0]}x{vis_size[1]}")
    return warnings


def _is_convex(quad: np.ndarray) -> bool:
    crosses = []
    for i in range(4):
        a, b, c = quad[i], quad[(i + 1) % 4], quad[(i + 2) % 4]
        crosses.append((b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]))
    crosses = np.asarray(crosses)
    return bool(np.all(crosses > 0) or np.all(crosses < 0))


def _overlap_fraction(quad: np.ndarray, vis_size: tuple[int, int]) -> float:
    w, h = vis_size
    rect = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    area, _ = cv2.intersectConvexConvex(quad.astype(np.float32), rect)
    return float(area) / max(1.0, float((w - 1) * (h - 1)))


@dataclass
class PointFit:
    """Result of a point-based estimate: the homography and per-pair reprojection errors (px)."""

    homography: Homography
    errors: np.ndarray
    inliers: np.ndarray

    @property
    def rms(self) -> float:
        e = self.errors[self.inliers]
        return float(np.sqrt(np.mean(e ** 2))) if e.size else float("nan")


def estimate_from_points(ir_pts, vis_pts, ransac_threshold: float = 3.0) -> PointFit:
    """RANSAC homography from ≥ 4 IR/visible point pairs; reprojection error of every pair."""
    src = np.asarray(ir_pts, np.float64).reshape(-1, 2)
    dst = np.asarray(vis_pts, np.float64).reshape(-1, 2)
    if len(src) != len(dst):
        raise RegistrationError(f"{len(src)} IR points but {len(dst)} visible points: give them in pairs")
    if len(src) < 4:
        raise RegistrationError(f"a homography needs at least 4 point pairs; got {len(src)}")
    for name, pts in (("IR", src), ("visible", dst)):
        if _max_triangle_area(pts) < 1.0:
            raise RegistrationError(f"the {name} points are (nearly) collinear or repeated; spread them over the image")
    m, mask = cv2.findHomography(src, dst, cv2.RANSAC, ransac_threshold)
    if m is None:
        raise RegistrationError("no homography fits these points (degenerate configuration)")
    inliers = mask.ravel().astype(bool)
    if inliers.sum() < 4:
        raise RegistrationError(f"only {int(inliers.sum())} point pairs agree within {ransac_threshold} px; "
                                "check the points or raise --ransac-threshold")
    h = Homography(m)
    errors = np.linalg.norm(h.apply(src) - dst, axis=1)
    return PointFit(h, errors, inliers)


def _max_triangle_area(pts: np.ndarray) -> float:
    best = 0.0
    n = min(len(pts), 12)  # a spread-out subset suffices to tell "all on a line" apart
    for i in range(n):
        for j in range(i + 1, n):
            for k in range(j + 1, n):
                a, b, c = pts[i], pts[j], pts[k]
                best = max(best, abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])) / 2)
    return best


def _luma(img: np.ndarray) -> np.ndarray:
    from tdfusion_edge.imaging import luma_and_chroma
    return luma_and_chroma(img)[0]


def _edges(y: np.ndarray) -> np.ndarray:
    y = cv2.GaussianBlur(y, (0, 0), 1.0)
    mag = cv2.magnitude(cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3))
    mag = cv2.GaussianBlur(mag, (0, 0), 1.5)
    return (mag / (float(mag.max()) + 1e-6)).astype(np.float32)


def edge_map(img: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """Blurred gradient magnitude in [0,1] at ``width`` pixels wide, and the scale used: the
    structure (object outlines) that IR and visible images share despite different intensities."""
    y = _luma(img)
    s = width / y.shape[1]
    return _edges(cv2.resize(y, (width, max(8, round(y.shape[0] * s))), interpolation=cv2.INTER_AREA)), s


def _best_shift(target: np.ndarray, moving: np.ndarray, max_shift: tuple[int, int]) -> tuple[tuple[int, int], float]:
    """Translation of ``moving`` that best matches ``target`` (zero-padded FFT cross-correlation)
    within ±max_shift, and the normalised correlation there."""
    a, b = target - target.mean(), moving - moving.mean()
    h, w = a.shape
    corr = np.fft.irfft2(np.fft.rfft2(a, (2 * h, 2 * w)) * np.conj(np.fft.rfft2(b, (2 * h, 2 * w))), (2 * h, 2 * w))
    corr = np.fft.fftshift(corr)[h - max_shift[1]:h + max_shift[1] + 1, w - max_shift[0]:w + max_shift[0] + 1]
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    score = float(corr[iy, ix]) / (float(np.linalg.norm(a) * np.linalg.norm(b)) + 1e-9)
    return (ix - max_shift[0], iy - max_shift[1]), score


def _edge_pair(ir: np.ndarray, vis: np.ndarray, width: int):
    e_vis, s_vis = edge_map(vis, width)
    e_ir, s_ir = edge_map(ir, max(8, round(width * ir.shape[1] / vis.shape[1])))
    return e_ir, e_vis, np.diag([s_ir, s_ir, 1.0]), np.diag([s_vis, s_vis, 1.0])


# Below this luminance spread (grey levels of 255) an image has no outlines to align.
MIN_LUMA_STD = 2.0


def require_structure(img: np.ndarray, role: str) -> None:
    """Refuse a featureless (near-constant) image before edge alignment, which would "align" anything."""
    std = float(np.std(_luma(img))) * 255.0
    if std < MIN_LUMA_STD:
        raise RegistrationError(f"the {role} image is featureless (luminance spread {std:.2f} grey levels, "
                                f"need ≥ {MIN_LUMA_STD:g}): nothing to align; give point pairs "
                                "(--pair/--points/--click)")


def estimate_from_edges(ir: np.ndarray, vis: np.ndarray, initial: Homography | None = None,
                        search_scale: float | None = None, search_angle: float = 3.0,
                        coarse_search: bool = True) -> tuple[Homography, float]:
    """Align the images' edge maps: a global search over scale, rotation and shift on top of
    ``initial`` (default: co-aligned cameras, IR stretched onto the visible frame), then an affine
    ECC refinement, kept only where it raises the edge correlation. ``coarse_search=False`` only
    refines ``initial`` (e.g. a point-based estimate).

    Returns the homography and the final edge correlation (0–1; real IR/visible pairs reach
    ~0.4–0.8). Expect a few pixels of accuracy; point pairs (``--refine``) do better.
    """
    ir_size, vis_size = (ir.shape[1], ir.shape[0]), (vis.shape[1], vis.shape[0])
    for role, img in (("IR", ir), ("visible", vis)):
        require_structure(img, role)
    h0 = (initial or Homography.scaling(ir_size, vis_size)).matrix
    if search_scale is None:
        search_scale = 0.05 if initial else 0.12
    start = _coarse_search(ir, vis, h0, search_scale, search_angle) if coarse_search else h0
    result, rho = _refine_affine(ir, vis, start)
    method = "edges (search + ECC)" if coarse_search else "points refined on edges (ECC)"
    h = Homography(result, ir_size, vis_size, {"method": method, "edge_correlation": round(rho, 4)})
    check_homography(h, ir_size, vis_size)
    return h, rho


def _coarse_search(ir: np.ndarray, vis: np.ndarray, h0: np.ndarray, search_scale: float,
                   search_angle: float) -> np.ndarray:
    """Best scale × rotation (grid) × shift (cross-correlation) on top of ``h0``, at 160 px wide:
    coarse enough to ignore the texture IR and visible images do not share."""
    e_ir, e_vis, s_ir, s_vis = _edge_pair(ir, vis, min(160, vis.shape[1]))
    hh, ww = e_vis.shape
    start = s_vis @ h0 @ np.linalg.inv(s_ir)
    best_score, best = -1.0, start
    for scale in np.linspace(1 - search_scale, 1 + search_scale, 11):
        for angle in np.linspace(-search_angle, search_angle, 7) if search_angle else (0.0,):
            rot = np.vstack([cv2.getRotationMatrix2D((ww / 2, hh / 2), float(angle), float(scale)), [0, 0, 1]])
            m = rot @ start
            (dx, dy), score = _best_shift(e_vis, cv2.warpPerspective(e_ir, m, (ww, hh)), (ww // 4, hh // 4))
            if score > best_score:
                best_score, best = score, np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]]) @ m
    return np.linalg.inv(s_vis) @ best @ s_ir


def _refine_affine(ir: np.ndarray, vis: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, float]:
    """Affine ECC (≤ 320 px) between the visible edges and the edges of the IR image warped by ``h``
    (edges taken after warping, so both have the same blur in the same pixels); the refinement is
    kept only if it raises the correlation and moves the frame by < 5 %."""
    e_vis, sv = edge_map(vis, min(320, vis.shape[1]))
    hh, ww = e_vis.shape
    m = np.diag([sv, sv, 1.0]) @ h
    e_moved = _edges(cv2.warpPerspective(_luma(ir), m, (ww, hh), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REPLICATE))
    before = _correlation(e_vis, e_moved)
    try:
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
        _, warp = cv2.findTransformECC(e_vis, e_moved, np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE,
                                       criteria, None, 1)
    except cv2.error:
        return h, before  # ECC did not converge: the starting estimate stands
    residual = np.linalg.inv(np.vstack([warp.astype(np.float64), [0, 0, 1]]))  # ECC maps visible → IR
    refined = np.diag([1 / sv, 1 / sv, 1.0]) @ residual @ m
    corners = [[0, 0], [vis.shape[1], vis.shape[0]]]
    moved_px = np.abs(Homography(refined).apply(corners) - Homography(h).apply(corners)).max()
    after = _correlation(e_vis, _edges(cv2.warpPerspective(_luma(ir), np.diag([sv, sv, 1.0]) @ refined, (ww, hh),
                                                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)))
    if after > before and moved_px < 0.05 * vis.shape[1]:
        return refined, after
    return h, before


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))
