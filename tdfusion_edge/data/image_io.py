"""Reading dataset images: 8-bit IR luminance, visible Y (+ CrCb) by OpenCV YCrCb, label masks, headers."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tdfusion_edge.errors import ImageReadError
from tdfusion_edge.imaging.io import decode_file
# One decoder and one 16-bit mapping for fuse, eval and datasets (percentiles, per channel).
from tdfusion_edge.validation.image import HIGH_DEPTH_PERCENTILES, pil_open, to_uint8  # noqa: F401


def read_gray(path: str | Path) -> np.ndarray:
    """An image as 8-bit H×W luminance (colour files converted by OpenCV's BGR→GRAY, i.e. Y of YCrCb)."""
    img = decode_file(path)
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        img = cv2.cvtColor(to_uint8(img), cv2.COLOR_BGR2GRAY) if img.shape[2] == 3 else img[:, :, 0]
    return to_uint8(img)


def read_bgr(path: str | Path) -> np.ndarray:
    """An image as 8-bit H×W×3 BGR (gray files replicated to three channels)."""
    img = decode_file(path)
    if img.ndim == 2:
        return cv2.cvtColor(to_uint8(img), cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return to_uint8(img)


def bgr_to_ycrcb(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Y H×W, CrCb H×W×2), both uint8, by OpenCV's YCrCb conversion."""
    ycrcb = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)
    return ycrcb[:, :, 0], ycrcb[:, :, 1:]


def read_mask(path: str | Path) -> np.ndarray:
    """A label mask as H×W integer class ids (first channel of a colour file)."""
    img = decode_file(path)
    if img.ndim == 3:
        img = img[:, :, 0]
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header without decoding the pixels (PIL reads headers lazily)."""
    from PIL import UnidentifiedImageError

    try:
        with pil_open()(path) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageReadError(f"cannot open image {path}: {exc}") from None
    if w <= 0 or h <= 0:
        raise ImageReadError(f"image {path} has an empty size")
    return h, w
