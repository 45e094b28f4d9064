"""A variant of the meta-gradient: G's gradient with the per-image "brighter source" mode removed.

At CPU scale F's tangent kernel is dominated by one nearly uniform mode, so one task-loss step moves
F's output almost equally everywhere and the meta-gradient with respect to the weight map is, per
image, about (I_ir − I_vis)(p) × one scalar: G then learns "take the brighter source" (or the darker),
its sign set by the task's summed wish. This variant takes that direction out of ∂L_t/∂w_ir image by
image (an orthogonal projection), so G is moved only by where the task wants more or less IR than the
brightness difference alone says. The forward value is untouched; only the outer gradient changes.
"""
from __future__ import annotations

import torch


class _RemoveModeInGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(direction)
        return w.view_as(w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (d,) = ctx.saved_tensors
        return project_out(grad, d), None


def project_out(grad: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``grad`` minus, per image, its component along ``direction`` (both B×C×H×W; zero directions kept)."""
    g = grad.flatten(1)
    d = direction.to(grad.dtype).flatten(1)
    dd = (d * d).sum(1, keepdim=True)
    coef = torch.where(dd > 0, (g * d).sum(1, keepdim=True) / dd.clamp_min(torch.finfo(grad.dtype).tiny),
                       torch.zeros_like(dd))
    return (g - coef * d).view_as(grad)


def remove_brightness_mode(w_ir: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """``w_ir`` unchanged in value; the gradient reaching it loses its per-image component along I_ir − I_vis."""
    return _RemoveModeInGrad.apply(w_ir, (ir - vis).detach())
