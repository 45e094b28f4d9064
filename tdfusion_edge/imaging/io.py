"""Reading and writing images: 8- and 16-bit, gray or colour, with one-line errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tdfusion_edge.validation.image import IMAGE_EXTENSIONS, decode_image
from tdfusion_edge.validation.output_path import write_image_atomic

__all__ = ["IMAGE_EXTENSIONS", "decode_file", "read_image", "write_image"]


def decode_file(path: str | os.PathLike, limit: int | None = None) -> np.ndarray:
    """The decoded pixels of an image file (the package's one decoder, ``validation.image.decode_image``):
    uint8/uint16, H×W or H×W×3, EXIF orientation applied, size bounded; ImageReadError otherwise."""
    return decode_image(path, limit)


def read_image(path: str | os.PathLike, limit: int | None = None) -> np.ndarray:
    """Image as stored: uint8 or uint16, H×W (gray) or H×W×3 (BGR); alpha is dropped, EXIF orientation applied."""
    return decode_image(path, limit)


def write_image(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write an 8-bit gray or BGR image atomically, creating the folder; the format follows the suffix."""
    return write_image_atomic(path, img)
