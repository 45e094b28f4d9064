"""Reading images the way the published fusion evaluators do."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def load_gray_for_metrics(path: str | Path) -> np.ndarray:
    """8-bit image → float32 gray in 0–255: BGR→GRAY on float32 data, then rounded (as the evaluators do)."""
    # cv2.imread leaves the decode to OpenCV exactly as the evaluators do; it returns None on failure.
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    # Converting the float copy (not the uint8 one) matters: OpenCV's uint8 path rounds differently.
    gray = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2GRAY)
    return np.round(gray).astype(np.float32)
