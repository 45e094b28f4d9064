"""Algorithm 1's meta step (eqs. 4–7) as pure functions on parameter dicts via ``functional_call``.

Inner update (eq. 4): θ_F' = θ_F − η ∇_θF L_f(F(x_mtr); G(x_mtr; θ_G)), with the graph kept so that
θ_F' is a differentiable function of θ_G. Eq. 5: θ_T' is one ordinary step of T on the task loss
of F(x_mtr) (F's detached output, as in the released code, so θ_T' does not depend on θ_G), computed
into a new dict: T itself, its buffers and its optimizer state are never written, so nothing has to
be saved and restored. Outer update (eqs. 6–7): L_t(T'(F'(x_mts))) differentiated with respect to θ_G —
a second-order path through ∂²L_f/∂θ_F∂θ_G.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
from torch.func import functional_call

from tdfusion_edge.kernels import fusion_loss

from .distributed import GradReducer
from .mode_removal import remove_brightness_mode

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LossSettings:
    """How L_f is formed: α, the intensity form, and an optional constant w_ir (ablation I)."""

    alpha: float = 1.0
    intensity_form: str = "paper"
    fixed_w: float | None = None
    remove_brightness_mode: bool = False  # variant: see mode_removal.py (inner update of the meta step only)


@dataclass(frozen=True)
class MetaStepResult:
    """Scalars of one meta step (this process's values) and the largest |meta-gradient| of θ_G."""

    loss_f: float
    loss_t_inner: float
    loss_t_outer: float
    g_grad_max: float


def params_and_buffers(module: nn.Module) -> tuple[Params, Params]:
    """A module's parameters (live tensors, so gradients reach them) and buffers, by name."""
    return dict(module.named_parameters()), dict(module.named_buffers())


def cloned_buffers(module: nn.Module) -> Params:
    """Copies of the buffers, for calls that may update them (BatchNorm statistics) without touching T."""
    return {k: v.detach().clone() for k, v in module.named_buffers()}


def weight_ir(loss_gen: nn.Module | None, g_params: Mapping[str, torch.Tensor] | None,
              ir: torch.Tensor, vis: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """G's per-pixel IR weight (B×1×H×W) under ``g_params``, or the constant of ablation I."""
    if settings.fixed_w is not None:
        return torch.full_like(ir, settings.fixed_w)
    return functional_call(loss_gen, dict(g_params), (ir, vis))[:, :1]


def fusion_objective(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, w_ir: torch.Tensor,
                     settings: LossSettings) -> torch.Tensor:
    """L_f = L_int + α·L_grad through the kernels' dispatching entry point."""
    return fusion_loss(fused, ir, vis, w_ir, alpha=settings.alpha, intensity_form=settings.intensity_form)


def inner_fusion_update(fusion_net: nn.Module, f_params: Params, f_buffers: Params,
                        loss_gen: nn.Module | None, g_params: Params | None,
                        ir: torch.Tensor, vis: torch.Tensor, lr: float, settings: LossSettings,
                        reducer: GradReducer | None = None) -> tuple[Params, torch.Tensor]:
    """Eq. 4 on a fusion crop: (θ_F' as a differentiable function of θ_G, L_f)."""
    fused = functional_call(fusion_net, (f_params, f_buffers), (ir, vis))
    w_ir = weight_ir(loss_gen, g_params, ir, vis, settings)
    if settings.remove_brightness_mode and settings.fixed_w is None:
        w_ir = remove_brightness_mode(w_ir, ir, vis)
    loss_f = fusion_objective(fused, ir, vis, w_ir, settings)
    names = list(f_params)
    grads = torch.autograd.grad(loss_f, [f_params[n] for n in names], create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(f_params[n]) if g is None else g for n, g in zip(names, grads)]
    if reducer is not None:
        grads = reducer.mean_differentiable(grads)
    return {n: f_params[n] - lr * g for n, g in zip(names, grads)}, loss_f


def adam_state_by_name(optimizer: torch.optim.Optimizer, named: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """The Adam moments and step count of each named parameter (empty before the first step)."""
    return {name: optimizer.state.get(p, {}) for name, p in named.items()}


def adam_update(params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor | None],
                state: Mapping[str, Mapping[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8, weight_decay: float = 0.0) -> Params:
    """What ``torch.optim.Adam.step`` would make of ``params``, returned as new tensors; ``state`` is read only."""
    b1, b2 = betas
    out: Params = {}
    for name, p in params.items():
        g = grads.get(name)
        if g is None:  # Adam leaves parameters without a gradient alone
            out[name] = p.detach()
            continue
        p = p.detach()
        if weight_decay:
            g = g + weight_decay * p
        st = state.get(name) or {}
        step = float(st["step"]) + 1.0 if "step" in st else 1.0
        m = st["exp_avg"] if "exp_avg" in st else torch.zeros_like(p)
        v = st["exp_avg_sq"] if "exp_avg_sq" in st else torch.zeros_like(p)
        m = torch.lerp(m, g, 1.0 - b1)
        v = v * b2 + (1.0 - b2) * g * g
        denom = v.sqrt() / math.sqrt(1.0 - b2 ** step) + eps
        out[name] = p - (lr / (1.0 - b1 ** step)) * m / denom
    return out


def task_step(task_net: nn.Module, t_params: Params, t_buffers: Params, images: torch.Tensor, targets: Any,
              lr: float, rule: str = "adam", optimizer: torch.optim.Optimizer | None = None,
              reducer: GradReducer | None = None) -> tuple[Params, torch.Tensor]:
    """Eq. 5: θ_T' after one step on L_t(images) — Adam from T's optimizer state, or SGD — as a new dict."""
    loss_t = functional_call(task_net, (t_params, t_buffers), (images, targets))
    names = list(t_params)
    grads = torch.autograd.grad(loss_t, [t_params[n] for n in names], allow_unused=True)
    if reducer is not None:
        reducer.mean_(grads)
    named_grads = dict(zip(names, grads))
    if rule == "sgd":
        new = {n: (t_params[n].detach() if g is None else t_params[n].detach() - lr * g) for n, g in named_grads.items()}
    else:
        group = optimizer.param_groups[0] if optimizer is not None else {}
        state = adam_state_by_name(optimizer, t_params) if optimizer is not None else {}
        new = adam_update(t_params, named_grads, state, lr, betas=tuple(group.get("betas", (0.9, 0.999))),
                          eps=group.get("eps", 1e-8), weight_decay=group.get("weight_decay", 0.0))
    return new, loss_t.detach()


@dataclass
class MetaNets:
    """The three networks, unwrapped (no DDP), plus T's adapter from a fused Y image to T's input."""

    fusion_net: nn.Module
    loss_gen: nn.Module | None
    task_net: nn.Module
    to_task_input: Callable[..., torch.Tensor]


@dataclass(frozen=True)
class MetaHyper:
    """Step sizes and rules of one meta step (η_F' = F's current lr in the released code)."""

    inner_lr: float
    task_lr: float
    inner_task_step: str = "adam"
    loss: LossSettings = LossSettings()


def task_inputs(nets: MetaNets, fused: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
    """T's input from a fused luminance image (with the visible chroma when the batch carries it)."""
    return nets.to_task_input(fused, batch.get("vis_crcb"))


def batch_targets(batch: Mapping[str, Any]) -> Any:
    """The task targets of a batch: a segmentation mask or detection targets."""
    for key in ("mask", "det_targets"):
        if key in batch:
            return batch[key]
    raise KeyError("batch has neither 'mask' nor 'det_targets'")


def one_step_task(nets: MetaNets, f_params: Params, f_buffers: Params, t_params: Params, t_buffers: Params,
                  inner: Mapping[str, Any], hyper: MetaHyper, t_optimizer: torch.optim.Optimizer | None,
                  reducer: GradReducer | None = None) -> tuple[Params, torch.Tensor]:
    """θ_T' from T's step on the task view of x_mtr fused by F itself (θ_F, not θ_F': the released code
    runs the un-updated network here), so θ_T' does not depend on θ_G."""
    with torch.no_grad():
        fused = functional_call(nets.fusion_net, (f_params, f_buffers), (inner["ir"], inner["vis"]))
    return task_step(nets.task_net, t_params, t_buffers, task_inputs(nets, fused, inner), batch_targets(inner),
                     hyper.task_lr, hyper.inner_task_step, t_optimizer, reducer)


def outer_task_loss(nets: MetaNets, f_prime: Params, f_buffers: Params, t_prime: Params, t_buffers: Params,
                    outer: Mapping[str, Any]) -> torch.Tensor:
    """L_t(T'(F'(x_mts))): differentiable in θ_G through θ_F'."""
    fused = functional_call(nets.fusion_net, (f_prime, f_buffers), (outer["ir"], outer["vis"]))
    return functional_call(nets.task_net, (t_prime, t_buffers), (task_inputs(nets, fused, outer), batch_targets(outer)))


def meta_objective(nets: MetaNets, g_params: Params, inner: Mapping[str, Any], outer: Mapping[str, Any],
                   hyper: MetaHyper, t_optimizer: torch.optim.Optimizer | None = None,
                   reducer: GradReducer | None = None, t_prime: Params | None = None
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The outer task loss as a function of θ_G (eqs. 4, 5, then the L_t of eq. 6), plus the inner results.

    ``t_prime`` given: use it instead of stepping T (θ_T' does not depend on θ_G).
    """
    f_params, f_buffers = params_and_buffers(nets.fusion_net)
    t_params = dict(nets.task_net.named_parameters())
    t_buffers = cloned_buffers(nets.task_net)
    f_prime, loss_f = inner_fusion_update(nets.fusion_net, f_params, f_buffers, nets.loss_gen, g_params,
                                          inner["crop_ir"], inner["crop_vis"], hyper.inner_lr, hyper.loss, reducer)
    loss_t_inner = torch.full((), float("nan"))
    if t_prime is None:
        t_prime, loss_t_inner = one_step_task(nets, f_params, f_buffers, t_params, t_buffers, inner, hyper,
                                              t_optimizer, reducer)
    loss_t = outer_task_loss(nets, f_prime, f_buffers, t_prime, t_buffers, outer)
    return loss_t, {"loss_f": loss_f.detach(), "loss_t_inner": loss_t_inner, "t_prime": t_prime}


def meta_gradient(nets: MetaNets, inner: Mapping[str, Any], outer: Mapping[str, Any], hyper: MetaHyper,
                  t_optimizer: torch.optim.Optimizer | None = None, reducer: GradReducer | None = None,
                  t_prime: Params | None = None) -> tuple[Params, torch.Tensor, dict[str, Any]]:
    """∂L_t(T'(F'(x_mts)))/∂θ_G (eq. 7), averaged over processes; returns (grads by name, L_t, inner results)."""
    g_params = dict(nets.loss_gen.named_parameters())
    loss_t, aux = meta_objective(nets, g_params, inner, outer, hyper, t_optimizer, reducer, t_prime)
    names = list(g_params)
    grads = torch.autograd.grad(loss_t, [g_params[n] for n in names], allow_unused=True)
    grads = [torch.zeros_like(g_params[n]) if g is None else g for n, g in zip(names, grads)]
    if reducer is not None:
        reducer.mean_(grads)
    return dict(zip(names, grads)), loss_t.detach(), aux


def max_normalised_step_(params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor], lr: float) -> float:
    """Released G update: θ −= lr·g / max|g| over all of G's parameters; returns max|g| (no step if 0)."""
    max_g = max((float(g.abs().max()) for g in grads.values() if g.numel()), default=0.0)
    if max_g > 0:
        with torch.no_grad():
            for name, p in params.items():
                p.sub_(grads[name] * (lr / max_g))
    return max_g


def apply_g_update_(loss_gen: nn.Module, grads: Mapping[str, torch.Tensor], rule: str, lr: float,
                    optimizer: torch.optim.Optimizer | None = None) -> float:
    """Step θ_G with the meta-gradient: 'maxnorm' (released) or 'adam' (``optimizer``); returns max|g|."""
    params = dict(loss_gen.named_parameters())
    if rule == "maxnorm":
        return max_normalised_step_(params, grads, lr)
    if optimizer is None:
        raise ValueError("g_update 'adam' needs G's optimizer")
    for name, p in params.items():
        p.grad = grads[name].detach().clone()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return max((float(g.abs().max()) for g in grads.values() if g.numel()), default=0.0)


def meta_step(nets: MetaNets, inner: Mapping[str, Any], outer: Mapping[str, Any], hyper: MetaHyper,
              g_rule: str, g_lr: float, t_optimizer: torch.optim.Optimizer | None = None,
              g_optimizer: torch.optim.Optimizer | None = None, reducer: GradReducer | None = None,
              check_finite: Callable[[str, torch.Tensor], None] | None = None) -> MetaStepResult:
    """One inner + outer update: θ_G moves, θ_F and θ_T are untouched. ``check_finite`` may raise on NaN/Inf."""
    grads, loss_t, aux = meta_gradient(nets, inner, outer, hyper, t_optimizer, reducer)
    if check_finite is not None:
        check_finite("fusion loss (inner update)", aux["loss_f"])
        check_finite("task loss (inner step of T)", aux["loss_t_inner"])
        check_finite("task loss (outer update)", loss_t)
        check_finite("meta-gradient of G", torch.stack([g.abs().max() for g in grads.values() if g.numel()]).max())
    g_max = apply_g_update_(nets.loss_gen, grads, g_rule, g_lr, g_optimizer)
    return MetaStepResult(float(aux["loss_f"]), float(aux["loss_t_inner"]), float(loss_t), g_max)
