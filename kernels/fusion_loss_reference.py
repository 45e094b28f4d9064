"""The learnable fusion loss L_f = L_int + α·L_grad in plain PyTorch: the spec for the Triton kernel."""
from __future__ import annotations

import torch
import torch.nn.functional as F

INTENSITY_FORMS = ("paper", "released")
REDUCTIONS = ("mean", "none")

_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel_xy(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel responses of a B×1×H×W image by cross-correlation with zero padding 1."""
    kx = torch.tensor(_SOBEL_X, dtype=img.dtype, device=img.device).reshape(1, 1, 3, 3)
    ky = kx.transpose(-1, -2).contiguous()
    return F.conv2d(img, kx, padding=1), F.conv2d(img, ky, padding=1)


def max_magnitude(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per pixel, whichever of a and b has the larger magnitude (ties go to a, the infrared)."""
    return torch.where(a.abs() >= b.abs(), a, b)


def fusion_loss_reference(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, w_ir: torch.Tensor,
                          alpha: float = 1.0, intensity_form: str = "paper",
                          reduction: str = "mean") -> torch.Tensor:
    """Weighted-intensity plus Sobel-gradient fusion loss; all inputs B×1×H×W, w_vis = 1 − w_ir.

    ``intensity_form="paper"``: mean(w_ir·(F−ir)² + w_vis·(F−vis)²) (eq. 2 of the paper);
    ``"released"``: mean((w_ir·(ir−F))²) + mean((w_vis·(vis−F))²) (the released code squares w).
    ``reduction="mean"`` gives one scalar over the batch, ``"none"`` one value per sample.
    """
    if intensity_form not in INTENSITY_FORMS:
        raise ValueError(f"intensity_form must be one of {INTENSITY_FORMS}, got {intensity_form!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    w_vis = 1.0 - w_ir
    if intensity_form == "paper":
        intensity = w_ir * (fused - ir) ** 2 + w_vis * (fused - vis) ** 2
    else:
        intensity = (w_ir * (ir - fused)) ** 2 + (w_vis * (vis - fused)) ** 2
    fx, fy = sobel_xy(fused)
    ix, iy = sobel_xy(ir)
    vx, vy = sobel_xy(vis)
    gradient = (fx - max_magnitude(ix, vx)).abs() + (fy - max_magnitude(iy, vy)).abs()
    per_pixel = intensity + alpha * gradient
    per_sample = per_pixel.flatten(1).mean(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample
