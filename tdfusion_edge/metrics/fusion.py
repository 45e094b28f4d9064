"""The fusion-metric registry and ``compute_metrics`` with its two evaluator conventions."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from . import gradient, information, ssim, statistics, vif
from ._checks import as_triple

METRIC_NAMES: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR", "CC", "Nabf")
CONVENTIONS: tuple[str, ...] = ("tdfusion", "cddfuse")
DEFAULT_CONVENTION = "tdfusion"

# Metrics whose value does not depend on the convention (computed once when several are asked for).
_SHARED = {
    "EN": lambda f, a, b: information.entropy(f),
    "SD": lambda f, a, b: statistics.sd(f),
    "SF": lambda f, a, b: gradient.sf(f),
    "AG": lambda f, a, b: gradient.ag(f),
    "MI": information.mi_metric,
    "SCD": statistics.scd,
    "Qabf": gradient.qabf,
    "PSNR": statistics.psnr,
    "CC": statistics.cc,
    "Nabf": gradient.nabf,
}
_VIF_COMBINE = {"tdfusion": "mean", "cddfuse": "sum"}


def resolve_metric_names(metrics: Iterable[str] | None) -> list[str]:
    """Canonical metric names (case-insensitive input), in the order given; all of them if None."""
    if metrics is None:
        return list(METRIC_NAMES)
    by_lower = {name.lower(): name for name in METRIC_NAMES}
    out: list[str] = []
    for raw in metrics:
        name = by_lower.get(str(raw).strip().lower())
        if name is None:
            raise ValueError(f"unknown metric {raw!r}; choose from {', '.join(METRIC_NAMES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("no metric asked for")
    return out


def _check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose from {', '.join(CONVENTIONS)}")
    return convention


def compute_metrics_conventions(fused, ir, vis, conventions: Sequence[str] = CONVENTIONS,
                                metrics: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """``{convention: {metric: value}}`` for one triple, computing convention-free metrics once."""
    conventions = [_check_convention(c) for c in conventions]
    names = resolve_metric_names(metrics)
    f, a, b = as_triple(fused, ir, vis)
    shared = {n: float(_SHARED[n](f, a, b)) for n in names if n in _SHARED}
    vif_pair = vif.vifp_many([a, b], f) if "VIF" in names else None
    results: dict[str, dict[str, float]] = {}
    for conv in conventions:
        row: dict[str, float] = {}
        for n in names:
            if n == "VIF":
                v_a, v_b = vif_pair
                row[n] = v_a + v_b if _VIF_COMBINE[conv] == "sum" else (v_a + v_b) / 2
            elif n == "SSIM":
                row[n] = ssim.ssim_metric(f, a, b, conv)
            else:
                row[n] = shared[n]
        results[conv] = row
    return results


def compute_metrics(fused, ir, vis, convention: str = DEFAULT_CONVENTION,
                    metrics: Iterable[str] | None = None) -> dict[str, float]:
    """Fusion metrics of one (fused, infrared, visible) triple of 2-D gray images in 0–255.

    ``convention``: 'tdfusion' (TDFusion's tables, default) or 'cddfuse' (CDDFuse's evaluator);
    they differ in VIF (mean vs sum of the two source scores) and SSIM (see ``ssim.ssim_metric``).
    ``metrics``: names from METRIC_NAMES (case-insensitive); all by default.
    Raises ValueError on non-2-D, non-finite, differently shaped or smaller than 3×3 inputs.

    Degenerate inputs never raise or warn; where the published formulas divide 0 by 0 the value is
    defined as: a correlation with a constant image is 0 (CC, SCD terms); a source with no local
    variance has VIFp 1.0 (CDDFuse's rule); Qabf is 0 if neither source has an edge; PSNR is +inf
    when F equals both sources. SSIM is NaN below 7×7 and VIF below 41×41 (their windows no longer fit).
    """
    return compute_metrics_conventions(fused, ir, vis, [convention], metrics)[convention]


__all__ = ["METRIC_NAMES", "CONVENTIONS", "DEFAULT_CONVENTION", "compute_metrics",
           "compute_metrics_conventions", "resolve_metric_names"]
