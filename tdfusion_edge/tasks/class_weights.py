"""Per-class weights of the segmentation cross-entropy, for labels where a few classes own most pixels.

``enet``: w_c = 1 / ln(1.02 + p_c) with p_c the share of class c among the labelled pixels of the batch
(the weighting of the ENet paper, computed per batch so no pass over the dataset is needed); a fixed
list gives one weight per class.
"""
from __future__ import annotations

from typing import Sequence

import torch

from tdfusion_edge.errors import TDFusionError

ENET_C = 1.02


def enet_class_weights(mask: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """1 / ln(1.02 + share of each class) over the labelled pixels of ``mask`` (float32, on its device)."""
    labelled = mask[mask != ignore_index]
    counts = torch.bincount(labelled.flatten().long(), minlength=num_classes)[:num_classes].float()
    share = counts / counts.sum().clamp_min(1.0)
    return 1.0 / torch.log(ENET_C + share)


def check_class_weights(spec: str | Sequence[float] | None, num_classes: int) -> str | tuple[float, ...] | None:
    """Validate a class-weight setting: None/'none', 'enet', or ``num_classes`` positive numbers."""
    if spec is None or spec == "none":
        return None
    if spec == "enet":
        return "enet"
    if isinstance(spec, str):
        raise TDFusionError(f"class_weights must be none, enet or a list of {num_classes} numbers, got {spec!r}")
    values = tuple(float(v) for v in spec)
    if len(values) != num_classes or any(not v > 0 for v in values):
        raise TDFusionError(f"class_weights needs {num_classes} positive numbers (one per class), got {list(spec)}")
    return values
