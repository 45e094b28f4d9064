"""Input validation shared by the fusion metrics."""
from __future__ import annotations

import numpy as np

# Below this the Sobel and gradient stencils have no interior at all.
MIN_SIDE = 3


def as_image(img, name: str = "image") -> np.ndarray:
    """``img`` as a finite 2-D float64 array, or a ValueError naming ``name``."""
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D gray image, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if min(arr.shape) < MIN_SIDE:
        raise ValueError(f"{name} is {arr.shape[0]}x{arr.shape[1]}; the metrics need at least "
                         f"{MIN_SIDE}x{MIN_SIDE} pixels")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def as_triple(fused, ir, vis) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a (fused, infrared, visible) triple: 2-D, finite, one shape; returned as float64."""
    f, a, b = as_image(fused, "fused"), as_image(ir, "ir"), as_image(vis, "vis")
    if not f.shape == a.shape == b.shape:
        raise ValueError(f"shape mismatch: fused {f.shape}, ir {a.shape}, vis {b.shape}")
    return f, a, b
