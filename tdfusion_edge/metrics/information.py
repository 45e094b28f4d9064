"""Information-theoretic metrics: entropy (EN) and mutual information (MI)."""
from __future__ import annotations

import numpy as np


def entropy(img: np.ndarray) -> float:
    """EN: Shannon entropy in bits of the 256-bin histogram of round(img) (clipped to 0–255)."""
    # The evaluators cast with np.uint8, which wraps out-of-range values; clipping is the sane equivalent
    # and is identical on the 0–255 data they were written for.
    levels = np.clip(np.round(img), 0, 255).astype(np.intp).ravel()
    p = np.bincount(levels, minlength=256) / levels.size
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p)))


def _labels(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes of the distinct values of ``x`` and their count."""
    flat = x.ravel()
    # Fast path for the usual rounded 0–255 data; otherwise every distinct float is its own label,
    # exactly as scikit-learn's mutual_info_score treats them.
    if flat.min() >= 0 and flat.max() <= 255 and np.array_equal(flat, np.round(flat)):
        return flat.astype(np.intp), 256
    uniq, codes = np.unique(flat, return_inverse=True)
    return codes.astype(np.intp), uniq.size


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """MI (natural log) between the raw values of two images, as scikit-learn's ``mutual_info_score``."""
    cx, nx = _labels(x)
    cy, ny = _labels(y)
    joint = np.bincount(cx * ny + cy, minlength=nx * ny).reshape(nx, ny).astype(np.float64)
    n = float(cx.size)
    px = joint.sum(axis=1)
    py = joint.sum(axis=0)
    i, j = np.nonzero(joint)
    c = joint[i, j]
    mi = np.sum(c / n * (np.log(c) + np.log(n) - np.log(px[i]) - np.log(py[j])))
    # scikit-learn clips tiny negative round-off to zero.
    return float(max(mi, 0.0))


def mi_metric(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """MI metric: MI(F, A) + MI(F, B)."""
    return mutual_information(f, a) + mutual_information(f, b)
