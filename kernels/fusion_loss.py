"""Fusion loss entry point: Triton on CUDA, the reference elsewhere."""
from __future__ import annotations

import torch

from .dispatch import use_triton
from .fusion_loss_reference import fusion_loss_reference


def fusion_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, w_ir: torch.Tensor,
                alpha: float = 1.0, intensity_form: str = "paper", reduction: str = "mean",
                backend: str | None = None) -> torch.Tensor:
    """L_int + α·L_grad (see ``fusion_loss_reference``), dispatched by ``backend``."""
    if use_triton(fused, ir, vis, w_ir, backend=backend):
        from .fusion_loss_triton import fusion_loss_triton
        return fusion_loss_triton(fused, ir, vis, w_ir, alpha=alpha, intensity_form=intensity_form,
                                  reduction=reduction)
    return fusion_loss_reference(fused, ir, vis, w_ir, alpha=alpha, intensity_form=intensity_form,
                                 reduction=reduction)
