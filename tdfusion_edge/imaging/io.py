"""Reading and writing images: 8- and 16-bit, gray or colour, with one-line errors."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from tdfusion_edge.errors import ImageReadError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def decode_file(path: str | os.PathLike, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """The decoded pixels of an image file, or ImageReadError naming a missing, unreadable or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # fromfile + imdecode copes with non-ASCII paths
    except OSError as exc:
        raise ImageReadError(f"cannot read {path}: {exc.strerror or exc}") from None
    img = cv2.imdecode(data, flags) if data.size else None
    if img is None:
        raise ImageReadError(f"cannot decode image (corrupt or unsupported format): {path}")
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Image as stored: uint8 or uint16, H×W (gray) or H×W×3 (BGR); alpha is dropped."""
    img = decode_file(path)
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"unsupported pixel type {img.dtype} in {path}; expected 8- or 16-bit")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 2:
        raise ImageReadError(f"two-channel images are not supported: {path}")
    return np.ascontiguousarray(img)


def write_image(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write an 8-bit gray or BGR image, creating the folder; the format follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", img)
    if not ok:
        raise ImageReadError(f"cannot encode image for {path}")
    buf.tofile(str(path))
    return path
