"""Fusion metrics (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM, PSNR, CC, Nabf) in the conventions of the
published TDFusion and CDDFuse evaluators, plus segmentation scores and table writers."""
from .fusion import (CONVENTIONS, DEFAULT_CONVENTION, METRIC_NAMES, compute_metrics, compute_metrics_conventions,
                     resolve_metric_names)
from .io import load_gray_for_metrics
from .segmentation import confusion_matrix, miou_macc

__all__ = [
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "METRIC_NAMES",
    "compute_metrics",
    "compute_metrics_conventions",
    "confusion_matrix",
    "load_gray_for_metrics",
    "miou_macc",
    "resolve_metric_names",
]
