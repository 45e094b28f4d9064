"""The fusion phase of Algorithm 1 (eqs. 8–9): F on L_f with G frozen, then T on L_t of F's detached output.

F and T may be DDP-wrapped here (ordinary forward/backward, so DDP averages their gradients);
G is only ever run forward, without gradients.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from .ablations import Ablations
from .distributed import unwrap
from .meta_step import LossSettings, batch_targets, fusion_objective


@dataclass(frozen=True)
class FusionStepResult:
    """This process's losses of one fusion step (L_f is NaN where the step has no fusion loss)."""

    loss_f: float
    loss_t: float
    loss_t_through_f: float


def generator_weight(loss_gen: nn.Module | None, ir: torch.Tensor, vis: torch.Tensor,
                     settings: LossSettings) -> torch.Tensor:
    """w_ir from the frozen G (or the constant of ablation I), without a graph."""
    if settings.fixed_w is not None:
        return torch.full_like(ir, settings.fixed_w)
    with torch.no_grad():
        return loss_gen(ir, vis)[:, :1]


def fusion_step(fusion_net: nn.Module, task_net: nn.Module, loss_gen: nn.Module | None,
                to_task_input: Callable[..., torch.Tensor], batch: Mapping[str, Any],
                f_optimizer: torch.optim.Optimizer, t_optimizer: torch.optim.Optimizer,
                settings: LossSettings, ablations: Ablations,
                check_finite: Callable[[str, torch.Tensor], None] | None = None) -> FusionStepResult:
    """One step of F (eq. 8; with L_t too under ablation III; L_t only under V) and one of T (eq. 9)."""
    check = check_finite or (lambda name, value: None)
    targets = batch_targets(batch)
    f_params = [p for p in unwrap(fusion_net).parameters() if p.requires_grad]

    f_optimizer.zero_grad(set_to_none=True)
    loss_f = torch.full((), float("nan"))
    loss_t_f = torch.full((), float("nan"))
    total = None
    if not ablations.weighted_average:
        ir, vis = batch["crop_ir"], batch["crop_vis"]
        loss_f = fusion_objective(fusion_net(ir, vis), ir, vis, generator_weight(loss_gen, ir, vis, settings), settings)
        check("fusion loss (fusion phase)", loss_f.detach())
        total = loss_f
    if ablations.task_drives_f or ablations.weighted_average:
        # T's plain module: T's own gradients are not wanted here (T steps below), and a DDP
        # forward whose backward leaves T's parameters untouched would stall DDP's reducer.
        fused = fusion_net(batch["ir"], batch["vis"])
        loss_t_f = unwrap(task_net)(to_task_input(fused, batch.get("vis_crcb")), targets)
        check("task loss through F (fusion phase)", loss_t_f.detach())
        total = loss_t_f if total is None else total + loss_t_f
    total.backward(inputs=f_params)
    f_optimizer.step()

    t_optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        fused = unwrap(fusion_net)(batch["ir"], batch["vis"])
    loss_t = task_net(to_task_input(fused, batch.get("vis_crcb")), targets)
    check("task loss (fusion phase)", loss_t.detach())
    loss_t.backward()
    t_optimizer.step()
    return FusionStepResult(float(loss_f.detach()), float(loss_t.detach()), float(loss_t_f.detach()))
