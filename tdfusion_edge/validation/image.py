"""The one image decoder of the package (fuse, eval, datasets, the live folder source), and folder listings.

* Size is bounded from the file header before any pixel is decoded (``max_pixels``), so one huge
  file in a folder of small ones is a counted skip (``ImageTooLarge``) instead of exhausting memory.
* EXIF orientation is honoured (the image as a viewer shows it, as ``cv2.imread`` does by default).
* 8- and 16-bit pixels are kept; 16-bit data is mapped to [0, 1] by robust percentiles
  (``normalize_high_depth``) wherever a command needs 8-bit or unit range (fuse, eval, datasets).
* A folder listing by file stem refuses stems that several files share (``a.png`` and ``a.jpg``):
  which one was meant is unknowable, so neither is used and both are named.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from tdfusion_edge.errors import ImageReadError, TDFusionError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# 40 megapixels: larger than any camera frame or dataset image this package is meant for (an 8K
# frame is 33 MP) while a 6000×8000 photo (48 MP) is refused; its fusion alone would need tens of GB.
DEFAULT_MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "TDFUSION_EDGE_MAX_PIXELS"
# 16-bit data maps to [0, 1] between these percentiles (robust to hot/cold outlier pixels).
HIGH_DEPTH_PERCENTILES = (0.5, 99.5)
# ANYDEPTH keeps 16-bit data, ANYCOLOR keeps gray files gray; without IGNORE_ORIENTATION OpenCV
# applies the EXIF orientation (IMREAD_UNCHANGED would not). Alpha is dropped by ANYCOLOR.
DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


class ImageTooLarge(ImageReadError):
    """An image whose header announces more pixels than the configured maximum."""


def max_pixels(override: int | None = None) -> int:
    """The pixel bound: ``override``, else ``$TDFUSION_EDGE_MAX_PIXELS``, else ``DEFAULT_MAX_PIXELS``."""
    if override is not None:
        value, origin = override, "--max-pixels"
    else:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        try:
            value, origin = int(float(text)), MAX_PIXELS_ENV
        except ValueError:
            raise TDFusionError(f"{MAX_PIXELS_ENV}={text!r} is not a number of pixels") from None
    if not 1 <= value <= 2**40:
        raise TDFusionError(f"{origin} must be a positive number of pixels, got {value}")
    return int(value)


def pil_open():
    """PIL's own ``Image.open``: ultralytics replaces it with a wrapper that tries to pip-install a
    HEIF plugin whenever a file is not recognised, which a corrupt image must not trigger."""
    from PIL import Image

    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", Image.open) if patches is not None else Image.open


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) read from the file header without decoding pixels; None if PIL cannot parse it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with pil_open()(path) as im:
                w, h = im.size
    except Image.DecompressionBombError as exc:  # PIL's own bound (far above ours): surely too large
        raise ImageTooLarge(f"image too large: {path} ({exc})") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None  # unknown to PIL: OpenCV decides below (and reports a corrupt file in one line)
    return int(h), int(w)


def _check_pixels(path: Path, h: int, w: int, limit: int) -> None:
    if h * w > limit:
        raise ImageTooLarge(f"image too large: {path} is {w}x{h} ({h * w / 1e6:.1f} MP), above the limit of "
                            f"{limit / 1e6:.1f} MP (raise it with --max-pixels or {MAX_PIXELS_ENV})")


def decode_image(path: str | os.PathLike, limit: int | None = None) -> np.ndarray:
    """Pixels of an image file: uint8 or uint16, H×W (gray) or H×W×3 (BGR), EXIF orientation applied.

    ``limit``: maximum pixels (default ``max_pixels()``), checked on the header before decoding.
    Raises ImageReadError (ImageTooLarge for the bound) naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    limit = max_pixels() if limit is None else limit
    size = header_size(path)
    if size is not None:
        if min(size) <= 0:
            raise ImageReadError(f"image {path} has an empty size")
        _check_pixels(path, *size, limit)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # fromfile + imdecode copes with non-ASCII paths
    except OSError as exc:
        raise ImageReadError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        img = cv2.imdecode(data, DECODE_FLAGS) if data.size else None
    except cv2.error:  # OpenCV's own size limit or a decoder fault
        img = None
    if img is None:
        raise ImageReadError(f"cannot decode image (corrupt or unsupported format): {path}")
    _check_pixels(path, img.shape[0], img.shape[1], limit)  # headers PIL could not read
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"unsupported pixel type {img.dtype} in {path}; expected 8- or 16-bit")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.ndim == 3 and img.shape[2] != 3:
        raise ImageReadError(f"{img.shape[2]}-channel images are not supported: {path}")
    return np.ascontiguousarray(img)


# Peak memory of one CPU fusion pass per input pixel: measured 2.4 GB per megapixel with the torch
# backend and the built-in weights (0.26 MP: +632 MB, 1.05 MP: +2491 MB), i.e. linear in pixels.
FUSION_BYTES_PER_PIXEL = 2400


def available_memory() -> int | None:
    """Bytes the kernel says are available (Linux ``MemAvailable``), or None where that is unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fusion_memory(h: int, w: int, name: str) -> None:
    """ImageTooLarge when fusing an h×w pair on the CPU would need more memory than is available now."""
    free = available_memory()
    need = h * w * FUSION_BYTES_PER_PIXEL
    if free is not None and need > free:
        raise ImageTooLarge(f"{name} is {w}x{h}: fusing it needs about {need / 2**30:.1f} GiB, "
                            f"{free / 2**30:.1f} GiB are available (lower --max-pixels to skip such images sooner)")


def normalize_high_depth(img: np.ndarray, percentiles: tuple[float, float] = HIGH_DEPTH_PERCENTILES) -> np.ndarray:
    """16-bit (or float) data → float32 [0, 1] between robust percentiles, per channel; a flat plane → 0.5."""
    if img.ndim == 3:
        return np.stack([normalize_high_depth(img[:, :, c], percentiles) for c in range(img.shape[2])], axis=2)
    data = img.astype(np.float32)
    lo, hi = np.percentile(data, percentiles)
    if hi <= lo:  # a flat frame carries no contrast; mid-gray instead of dividing by zero
        return np.full(data.shape, 0.5, dtype=np.float32)
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """8-bit data unchanged; 16-bit/float data through ``normalize_high_depth``, ×255, rounded."""
    if img.dtype == np.uint8:
        return img
    return np.rint(normalize_high_depth(img) * 255.0).astype(np.uint8)


@dataclass
class ImageIndex:
    """Image files of a folder by stem; ``duplicates``: stems several files share (not in ``by_stem``)."""

    by_stem: dict[str, Path] = field(default_factory=dict)
    duplicates: dict[str, list[Path]] = field(default_factory=dict)


def index_images(folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> ImageIndex:
    """List ``folder``'s image files by stem; a stem shared by several files goes to ``duplicates``."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() in extensions and path.is_file():
            groups.setdefault(path.stem, []).append(path)
    index = ImageIndex()
    for stem, paths in groups.items():
        if len(paths) == 1:
            index.by_stem[stem] = paths[0]
        else:
            index.duplicates[stem] = paths
    return index


def describe_duplicates(stem: str, paths: Sequence[Path], role: str) -> str:
    """One line for a refused stem: which files share it, and where."""
    return f"{stem}: several {role} files share this name ({', '.join(p.name for p in paths)}); rename all but one"


def check_distinct_inputs(paths: Sequence[tuple[str, str | os.PathLike]]) -> None:
    """Refuse two input options naming the same folder (``--ir`` equal to ``--vis``)."""
    seen: dict[Path, str] = {}
    for flag, given in paths:
        key = Path(given).expanduser().resolve()
        if key in seen:
            raise TDFusionError(f"{seen[key]} and {flag} are the same folder ({given}): "
                                "give the infrared and the visible images in separate folders")
        seen[key] = flag
