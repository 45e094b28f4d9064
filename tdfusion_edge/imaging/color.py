"""Luminance/chroma split and merge (OpenCV YCrCb), thermal normalisation, output stretch."""
from __future__ import annotations

import cv2
import numpy as np

from tdfusion_edge.validation.image import normalize_high_depth

NEUTRAL_CHROMA = 128.0
# OpenCV's float YCrCb centres chroma on 0.5 whatever the data range; 8-bit data centres on 128.
_FLOAT_CHROMA_SHIFT = NEUTRAL_CHROMA - 0.5


def normalize_thermal(img: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """14/16-bit thermal counts → float32 [0,1] by robust percentiles (hot/cold outliers clipped).

    The same mapping as every other reader of 16-bit data (``validation.image.normalize_high_depth``)."""
    return normalize_high_depth(img, (low_pct, high_pct))


def is_grayscale(img: np.ndarray) -> bool:
    """True for single-channel images and for colour images whose three channels are equal."""
    if img.ndim == 2:
        return True
    return bool(np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 1], img[:, :, 2]))


def luma_and_chroma(img: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Y in [0,1] (float32 H×W) and Cr/Cb (float32 H×W×2, 0–255 scale, neutral 128) or None for gray.

    8-bit colour follows the released inference: OpenCV YCrCb of the float 0–255 image, Y / 255.
    16-bit images are normalised robustly first; their chroma is taken from the normalised 8-bit scale.
    """
    if img.dtype == np.uint16:
        if img.ndim == 2 or is_grayscale(img):
            return normalize_thermal(img if img.ndim == 2 else img[:, :, 0]), None
        scaled = np.stack([normalize_thermal(img[:, :, c]) for c in range(3)], axis=2) * 255.0
        ycc = cv2.cvtColor(scaled.astype(np.float32), cv2.COLOR_BGR2YCrCb)
        return ycc[:, :, 0] / 255.0, ycc[:, :, 1:] + _FLOAT_CHROMA_SHIFT
    if img.ndim == 2:
        return img.astype(np.float32) / 255.0, None
    ycc = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2YCrCb)
    y = ycc[:, :, 0] / 255.0
    return y, (None if is_grayscale(img) else ycc[:, :, 1:] + _FLOAT_CHROMA_SHIFT)


def merge_chroma(crcb_a: np.ndarray | None, crcb_b: np.ndarray | None) -> np.ndarray | None:
    """Chroma of the fused image: the colour source's, or, if both are colour, each channel weighted
    by its distance from neutral (128), so the more saturated source dominates per pixel."""
    if crcb_a is None:
        return crcb_b
    if crcb_b is None:
        return crcb_a
    da = np.abs(crcb_a - NEUTRAL_CHROMA)
    db = np.abs(crcb_b - NEUTRAL_CHROMA)
    return ((crcb_a * da + crcb_b * db) / (da + db + 1e-4)).astype(np.float32)


# A pair whose two sources both span less than this (luminance in [0,1]) carries no contrast. Its fused
# output is left unstretched: min/max-stretching it would blow the network's border response and the
# noise up to a full-range pattern (measured with the released weights: all-black, all-white and grey
# pairs give raw outputs spanning 0.10-0.18, which the stretch turns into 0-255). Real pairs span far more.
FLAT_PAIR_SPAN = 8.0 / 255.0


def is_flat_pair(ir_y: np.ndarray, vis_y: np.ndarray, span: float = FLAT_PAIR_SPAN) -> bool:
    """True when both sources are near-constant (max − min below ``span``): such a pair is not stretched."""
    return bool(np.ptp(ir_y) < span and np.ptp(vis_y) < span)


def stretch_minmax(y: np.ndarray) -> np.ndarray:
    """Stretch to [0,1] by the image's own min and max, as the released inference does."""
    lo, hi = float(y.min()), float(y.max())
    if hi <= lo:
        return np.zeros_like(y, dtype=np.float32)
    return ((y - lo) / (hi - lo)).astype(np.float32)


def to_uint8(y01: np.ndarray) -> np.ndarray:
    """[0,1] float → 8-bit by ×255 and rounding (values clipped first)."""
    return np.round(np.clip(y01, 0.0, 1.0) * 255.0).astype(np.uint8)


def compose_output(y01: np.ndarray, crcb: np.ndarray | None) -> np.ndarray:
    """Fused luminance (+ chroma) → 8-bit gray, or 8-bit BGR when chroma is given."""
    gray = to_uint8(y01)
    if crcb is None:
        return gray
    ycc = np.concatenate([gray.astype(np.float32)[:, :, None],
                          crcb.astype(np.float32) - _FLOAT_CHROMA_SHIFT], axis=2)
    bgr = cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR)
    return np.round(np.clip(bgr, 0, 255)).astype(np.uint8)
