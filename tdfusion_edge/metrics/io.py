"""Reading images the way the published fusion evaluators do, through the package's one decoder."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tdfusion_edge.errors import ImageReadError
from tdfusion_edge.validation.image import decode_image, to_uint8


class MetricImageError(ImageReadError, ValueError):
    """An image eval cannot read (a ValueError too, as callers of this loader have always caught)."""


def load_gray_for_metrics(path: str | Path, limit: int | None = None) -> np.ndarray:
    """Image → float32 gray in 0–255: BGR→GRAY on float32 data, then rounded (as the evaluators do).

    Decoded like ``fuse`` decodes (``validation.image.decode_image``): EXIF orientation applied, at most
    ``limit`` pixels, 16-bit data mapped to 8 bits by robust percentiles (not OpenCV's ÷256), so eval
    scores the images fuse fused. 8-bit files give exactly the evaluators' ``cv2.imread`` result.
    """
    try:
        img = to_uint8(decode_image(path, limit))
    except ImageReadError as exc:
        error = MetricImageError(f"cannot read image: {exc}")
        error.cause = exc  # the decoder's own error (e.g. ImageTooLarge), for callers that count skips by kind
        raise error from None
    if img.ndim == 2:  # what cv2.imread(IMREAD_COLOR) returns for a gray file
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    # Converting the float copy (not the uint8 one) matters: OpenCV's uint8 path rounds differently.
    gray = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2GRAY)
    return np.round(gray).astype(np.float32)
