"""Pixel-domain multi-scale VIF (VIFp) of a fused image against its sources."""
from __future__ import annotations

import cv2
import numpy as np

SIGMA_N_SQ = 2.0
_EPS = 1e-10
_SCALES = (1, 2, 3, 4)


def _window(scale: int) -> np.ndarray:
    """1-D factor of the normalised N×N Gaussian window, N = 2^(5−s)+1, σ = N/5."""
    n = 2 ** (5 - scale) + 1
    sd = n / 5.0
    x = np.arange(n) - (n - 1) / 2
    g = np.exp(-(x * x) / (2 * sd * sd))
    # The 2-D window exp(-(x²+y²)/2σ²)/Σ factors exactly; no tap falls under MATLAB's eps cut-off.
    return g / g.sum()


def _valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """'valid' 2-D filtering with the separable window g⊗g."""
    r = (g.size - 1) // 2
    # The window is symmetric, so correlation equals the evaluators' convolution; the border mode is
    # irrelevant because only the fully-covered interior is kept.
    full = cv2.sepFilter2D(img, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
    return full[r:img.shape[0] - r, r:img.shape[1] - r]


def _scale_terms(mu_r, e_rr, mu_d, e_dd, e_rd) -> tuple[float, float]:
    """(numerator, denominator) contributions of one reference at one scale from local moments."""
    s1 = np.maximum(e_rr - mu_r * mu_r, 0)
    s2 = np.maximum(e_dd - mu_d * mu_d, 0)
    s12 = e_rd - mu_r * mu_d
    gain = s12 / (s1 + _EPS)
    sv = s2 - gain * s12
    # The published clean-up, in its order: flat reference, flat distorted, negative gain, tiny noise.
    flat_r = s1 < _EPS
    gain[flat_r] = 0
    sv[flat_r] = s2[flat_r]
    s1[flat_r] = 0
    flat_d = s2 < _EPS
    gain[flat_d] = 0
    sv[flat_d] = 0
    neg = gain < 0
    sv[neg] = s2[neg]
    gain[neg] = 0
    sv[sv <= _EPS] = _EPS
    num = np.sum(np.log10(1 + gain * gain * s1 / (sv + SIGMA_N_SQ)))
    den = np.sum(np.log10(1 + s1 / SIGMA_N_SQ))
    return float(num), float(den)


def vifp_many(refs: list[np.ndarray], dist: np.ndarray) -> list[float]:
    """VIFp(ref, dist) for each reference, sharing the work on ``dist``.

    A reference with no local variance anywhere (den = 0) scores 1.0, as CDDFuse's evaluator
    defines it; an image too small for the coarsest 3×3 window (under 41 px a side) gives NaN.
    """
    nums = [0.0] * len(refs)
    dens = [0.0] * len(refs)
    refs = list(refs)
    for scale in _SCALES:
        g = _window(scale)
        if scale > 1:
            refs = [_valid(r, g)[::2, ::2] for r in refs]
            dist = _valid(dist, g)[::2, ::2]
        if min(dist.shape) < g.size:
            return [float("nan")] * len(refs)
        mu_d, e_dd = _valid(dist, g), _valid(dist * dist, g)
        for i, ref in enumerate(refs):
            num, den = _scale_terms(_valid(ref, g), _valid(ref * ref, g), mu_d, e_dd, _valid(ref * dist, g))
            nums[i] += num
            dens[i] += den
    return [float(n / d) if d != 0 else 1.0 for n, d in zip(nums, dens)]


def vif(f: np.ndarray, a: np.ndarray, b: np.ndarray, combine: str) -> float:
    """VIF of F against A and B: their sum (``combine='sum'``) or mean (``'mean'``)."""
    v_a, v_b = vifp_many([a, b], f)
    return v_a + v_b if combine == "sum" else (v_a + v_b) / 2
