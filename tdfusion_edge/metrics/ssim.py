"""SSIM as scikit-image's ``structural_similarity`` defaults compute it (7×7 uniform window)."""
from __future__ import annotations

import cv2
import numpy as np

WIN = 7
_K1, _K2 = 0.01, 0.03
_COV_NORM = WIN * WIN / (WIN * WIN - 1.0)  # sample covariance


def _mean7(img: np.ndarray) -> np.ndarray:
    """7×7 box mean (border mode irrelevant: callers keep only the interior)."""
    return cv2.boxFilter(img, cv2.CV_64F, (WIN, WIN), normalize=True, borderType=cv2.BORDER_REFLECT)


def _interior(arr: np.ndarray) -> np.ndarray:
    pad = (WIN - 1) // 2
    return arr[pad:arr.shape[0] - pad, pad:arr.shape[1] - pad]


class _Moments:
    """Local mean and mean square of one image, reused across pairs."""

    def __init__(self, img: np.ndarray):
        self.img = img
        self.mu = _mean7(img)
        self.mu_sq = _mean7(img * img)


def _ssim(x: _Moments, y: _Moments, data_range: float) -> float:
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    mu_xy = _mean7(x.img * y.img)
    vx = _COV_NORM * (x.mu_sq - x.mu * x.mu)
    vy = _COV_NORM * (y.mu_sq - y.mu * y.mu)
    vxy = _COV_NORM * (mu_xy - x.mu * y.mu)
    num = (2 * x.mu * y.mu + c1) * (2 * vxy + c2)
    den = (x.mu * x.mu + y.mu * y.mu + c1) * (vx + vy + c2)
    return float(np.mean(_interior(num / den)))


def ssim_pair(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Mean SSIM of two gray images (NaN if smaller than the 7×7 window)."""
    if min(x.shape) < WIN:
        return float("nan")
    return _ssim(_Moments(x), _Moments(y), data_range)


def _as_uint8_values(img: np.ndarray) -> np.ndarray:
    """Values np.uint8() would give on in-range data (truncation), clipped instead of wrapped."""
    return np.clip(np.trunc(img), 0, 255)


def ssim_metric(f: np.ndarray, a: np.ndarray, b: np.ndarray, convention: str) -> float:
    """SSIM metric: 'tdfusion' = mean of SSIM(F,A), SSIM(F,B) on uint8 data (range 255);
    'cddfuse' = their sum on float data with data range 2 (old scikit-image's float default)."""
    if min(f.shape) < WIN:
        return float("nan")
    if convention == "tdfusion":
        mf, ma, mb = (_Moments(_as_uint8_values(x)) for x in (f, a, b))
        return (_ssim(mf, ma, 255.0) + _ssim(mf, mb, 255.0)) / 2
    mf, ma, mb = _Moments(f), _Moments(a), _Moments(b)
    return _ssim(mf, ma, 2.0) + _ssim(mf, mb, 2.0)
