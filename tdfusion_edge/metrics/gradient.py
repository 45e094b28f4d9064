"""Gradient-based metrics: SF, AG, Qabf (Xydeas–Petrović) and Nabf (Kumar's artifact measure)."""
from __future__ import annotations

import numpy as np

HALF_PI = np.pi / 2


def sf(img: np.ndarray) -> float:
    """SF: sqrt(mean of squared horizontal differences + mean of squared vertical differences)."""
    dx = img[:, 1:] - img[:, :-1]
    dy = img[1:, :] - img[:-1, :]
    return float(np.sqrt(np.mean(dx * dx) + np.mean(dy * dy)))


def ag(img: np.ndarray) -> float:
    """AG: mean of sqrt((Gx² + Gy²)/2), central differences inside and one-sided at the borders."""
    gy, gx = np.gradient(img)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2)))


def _sobel(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left−right, down−up) Sobel responses of the interior of a 1-pixel padded image."""
    rows = padded[:-2] + 2 * padded[1:-1] + padded[2:]        # [1,2,1] down the columns
    cols = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]  # [1,2,1] along the rows
    return rows[:, :-2] - rows[:, 2:], cols[2:] - cols[:-2]


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den where den ≠ 0, else 0 (callers overwrite those entries)."""
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


# ---- Qabf, as the TDFusion / CDDFuse Python evaluators compute it -------------------------------

def _xydeas_edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength and orientation from 'same' convolution with zero padding."""
    # Convolving with h3 = [[-1,0,1],...] flips it, so x is left minus right; with h1, y is below minus above.
    sx, sy = _sobel(np.pad(img, 1))
    strength = np.sqrt(sx * sx + sy * sy)
    angle = np.where(sx == 0, HALF_PI, np.arctan(_safe_ratio(sy, sx)))
    return strength, angle


def _xydeas_preservation(g_s, a_s, g_f, a_f) -> np.ndarray:
    """Q_SF edge preservation of source S in F (the evaluators' constants and tie rule)."""
    # Ties keep g_F itself (not 1): a quirk of the published code, reproduced on purpose.
    rel = np.where(g_s > g_f, _safe_ratio(g_f, g_s), np.where(g_s < g_f, _safe_ratio(g_s, g_f), g_f))
    orient = 1 - np.abs(a_s - a_f) / HALF_PI
    q_g = 0.9994 / (1 + np.exp(-15 * (rel - 0.5)))
    q_a = 0.9879 / (1 + np.exp(-22 * (orient - 0.8)))
    return q_g * q_a


def qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Qabf: Σ(Q_AF·g_A + Q_BF·g_B) / Σ(g_A + g_B); 0.0 if neither source has any edge."""
    g_a, a_a = _xydeas_edges(a)
    g_b, a_b = _xydeas_edges(b)
    g_f, a_f = _xydeas_edges(f)
    den = np.sum(g_a + g_b)
    if den == 0:
        return 0.0
    num = np.sum(_xydeas_preservation(g_a, a_a, g_f, a_f) * g_a + _xydeas_preservation(g_b, a_b, g_f, a_f) * g_b)
    return float(num / den)


# ---- Nabf, Kumar's modified artifact measure (VIFB / MATLAB objective_fusion_perform_fn) --------

_TD, _WT_MIN, _LG = 2.0, 0.001, 1.5
_NRG, _KG, _SIGMA_G = 0.9999, 19.0, 0.5
_NRA, _KA, _SIGMA_A = 0.9995, 22.0, 0.5


def _kumar_edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength and orientation: Sobel/8 correlation over a mirror (no edge repeat) extension."""
    left_right, down_up = _sobel(np.pad(img, 1, mode="reflect"))
    gv = -left_right / 8   # correlation with [-1 0 1; -2 0 2; -1 0 1]/8: right minus left
    gh = down_up / 8       # correlation with [-1 -2 -1; 0 0 0; 1 2 1]/8: below minus above
    strength = np.sqrt(gh * gh + gv * gv)
    # atan(gv/0) is ±π/2 in MATLAB; the sign is irrelevant because the orientation term is π-periodic.
    angle = np.where(gh == 0, np.where(gv == 0, 0.0, HALF_PI), np.arctan(_safe_ratio(gv, gh)))
    return strength, angle


def _kumar_preservation(g_s, a_s, g_f, a_f) -> np.ndarray:
    """Q_SF = sqrt(Q_g·Q_a) with the VIFB constants."""
    either_zero = (g_s == 0) | (g_f == 0)
    rel = np.where(either_zero, 0.0,
                   np.where(g_s > g_f, _safe_ratio(g_f, g_s), _safe_ratio(g_s, g_f)))
    orient = np.abs(np.abs(a_s - a_f) - HALF_PI) / HALF_PI
    q_g = _NRG / (1 + np.exp(-_KG * (rel - _SIGMA_G)))
    q_a = _NRA / (1 + np.exp(-_KA * (orient - _SIGMA_A)))
    return np.sqrt(q_g * q_a)


def nabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Nabf: edge-strength-weighted loss of preservation where F's edges exceed both sources'."""
    g_a, a_a = _kumar_edges(a)
    g_b, a_b = _kumar_edges(b)
    g_f, a_f = _kumar_edges(f)
    w_a = np.where(g_a >= _TD, g_a ** _LG, _WT_MIN)
    w_b = np.where(g_b >= _TD, g_b ** _LG, _WT_MIN)
    artifact = (g_f > g_a) & (g_f > g_b)
    loss = (1 - _kumar_preservation(g_a, a_a, g_f, a_f)) * w_a + (1 - _kumar_preservation(g_b, a_b, g_f, a_f)) * w_b
    return float(np.sum(loss[artifact]) / np.sum(w_a + w_b))
