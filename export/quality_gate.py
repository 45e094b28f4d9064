"""INT8 gate: an INT8 engine is kept only if its output stays close to the FP32 network's.

INT8 quantisation is known to distort image-output networks, so an INT8 build is measured on
held-out pairs against FP32 PyTorch and rejected below a PSNR threshold (default 35 dB, i.e. an
RMS error under ~1.8% of the range; fused images differing less than that are hard to tell apart).
A gate may also bound the largest single-pixel error (``max_abs_bound``): PSNR is a mean, and a
few blown pixels (a saturated quantisation range) would pass it while being visible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFAULT_MIN_PSNR_DB = 35.0


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``test`` against ``reference`` (inf when identical)."""
    ref = np.asarray(reference, dtype=np.float64)
    diff = ref - np.asarray(test, dtype=np.float64)
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


@dataclass(frozen=True)
class QualityReport:
    """How far a candidate precision is from FP32 on the measured pairs."""

    psnr_db: float            # worst pair
    mean_psnr_db: float
    max_abs: float
    pairs: int
    min_psnr_db: float
    max_abs_bound: float | None = None   # None: PSNR alone decides
    label: str = "INT8 vs FP32"

    @property
    def passed(self) -> bool:
        return self.psnr_db >= self.min_psnr_db and (self.max_abs_bound is None or self.max_abs <= self.max_abs_bound)

    def describe(self) -> str:
        verdict = "kept" if self.passed else "rejected"
        bound = "" if self.max_abs_bound is None else f", max abs ≤ {self.max_abs_bound:g}"
        return (f"{self.label} on {self.pairs} pair(s): worst PSNR {self.psnr_db:.1f} dB "
                f"(mean {self.mean_psnr_db:.1f}), "
                f"max abs diff {self.max_abs:.3f}; threshold {self.min_psnr_db:.1f} dB{bound} → {verdict}")

    def to_dict(self) -> dict:
        """JSON-ready fields (the gate record cached next to a quantised model)."""
        return {"psnr_db": self.psnr_db, "mean_psnr_db": self.mean_psnr_db, "max_abs": self.max_abs,
                "pairs": self.pairs, "min_psnr_db": self.min_psnr_db, "max_abs_bound": self.max_abs_bound,
                "label": self.label}

    def with_bounds(self, min_psnr_db: float, max_abs_bound: float | None) -> "QualityReport":
        """The same measurement judged against other bounds."""
        from dataclasses import replace
        return replace(self, min_psnr_db=min_psnr_db, max_abs_bound=max_abs_bound)


def measure_quality(references: Sequence[np.ndarray], candidates: Sequence[np.ndarray],
                    min_psnr_db: float = DEFAULT_MIN_PSNR_DB, max_abs_bound: float | None = None,
                    label: str = "INT8 vs FP32") -> QualityReport:
    """Compare candidate outputs (e.g. INT8 engine) with reference outputs (FP32), pair by pair, in [0,1]."""
    if not references or len(references) != len(candidates):
        raise ValueError("need the same, non-zero number of reference and candidate outputs")
    values = [psnr(r, c) for r, c in zip(references, candidates)]
    finite = [v for v in values if np.isfinite(v)] or [float("inf")]
    max_abs = max(float(np.max(np.abs(np.asarray(r, np.float64) - np.asarray(c, np.float64))))
                  for r, c in zip(references, candidates))
    return QualityReport(psnr_db=min(values), mean_psnr_db=float(np.mean(finite)), max_abs=max_abs,
                         pairs=len(values), min_psnr_db=min_psnr_db, max_abs_bound=max_abs_bound, label=label)
