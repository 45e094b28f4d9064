"""Global statistics: SD, CC, SCD and PSNR."""
from __future__ import annotations

import numpy as np


def sd(img: np.ndarray) -> float:
    """SD: population standard deviation of the image."""
    return float(np.std(img))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation over all pixels; 0.0 when either image is constant (undefined otherwise)."""
    dx = x - x.mean()
    dy = y - y.mean()
    den = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    # A constant image carries no linear relationship; 0 keeps a broken (flat) output from scoring NaN,
    # which a dataset mean would silently drop.
    if den == 0:
        return 0.0
    return float(np.sum(dx * dy) / den)


def cc(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """CC: mean of corr(A, F) and corr(B, F)."""
    return (pearson(a, f) + pearson(b, f)) / 2


def scd(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """SCD: corr(A, F − B) + corr(B, F − A)."""
    return pearson(a, f - b) + pearson(b, f - a)


def psnr(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """PSNR: 10·log10(max(F)² / mean(MSE(A,F), MSE(B,F))); +inf when F equals both sources."""
    mse = (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2
    if mse == 0:
        return float("inf")
    peak = float(np.max(f)) ** 2
    if peak == 0:
        return float("-inf")
    return float(10 * np.log10(peak / mse))
