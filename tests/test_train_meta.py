"""Algorithm 1's meta step: the second-order meta-gradient of θ_G is real (against an independent oracle of
real optimizer steps, float64),
T' is Adam's step without touching T, G's update rules, and the Table 3 ablation switches."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from meta_nets import TinySegmenter, make_batch, make_nets
from tdfusion_edge.train.ablations import Ablations, WeightedAverageFusion
from tdfusion_edge.train.config import ConfigError, TrainConfig, build_config
from tdfusion_edge.train.fusion_phase import fusion_step
from tdfusion_edge.train.meta_step import (LossSettings, MetaHyper, adam_update, apply_g_update_,
                                           meta_gradient, meta_step)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sobel(img):
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=img.dtype).view(1, 1, 3, 3)
    return F.conv2d(img, kx, padding=1), F.conv2d(img, kx.transpose(-1, -2), padding=1)


def _oracle_fusion_loss(fused, ir, vis, w_ir, form):
    """L_f written from the design notes, not from the project's kernels: intensity (paper or released
    form) plus mean |Sobel F − the larger-magnitude source Sobel| per axis (ties to IR)."""
    w_vis = 1.0 - w_ir
    if form == "paper":
        intensity = (w_ir * (fused - ir) ** 2 + w_vis * (fused - vis) ** 2).mean()
    else:
        intensity = ((w_ir * (ir - fused)) ** 2).mean() + ((w_vis * (vis - fused)) ** 2).mean()
    grad = 0.0
    for f_axis, i_axis, v_axis in zip(_sobel(fused), _sobel(ir), _sobel(vis)):
        target = torch.where(i_axis.abs() >= v_axis.abs(), i_axis, v_axis)
        grad = grad + (f_axis - target).abs().mean()
    return intensity + grad


def _oracle_outer_loss(nets, g_state, inner, outer, inner_lr, t_optimizer):
    """L_t(T'(F'(x_mts))) by real optimizer steps on copies: F' one torch SGD step (lr η) on L_f weighted by
    G(θ_G = ``g_state``); T' one step of ``t_optimizer``'s copy on T's task loss of x_mtr fused by F."""
    f, g, t = (copy.deepcopy(m) for m in (nets.fusion_net, nets.loss_gen, nets.task_net))
    g.load_state_dict(g_state)
    t_opt = type(t_optimizer)(t.parameters(), **{k: v for k, v in t_optimizer.defaults.items()
                                                 if k in ("lr", "betas", "eps", "weight_decay", "momentum")})
    # T's own moments and step count, deep-copied: load_state_dict would share the tensors and step them
    t_opt.load_state_dict(copy.deepcopy(t_optimizer.state_dict()))
    with torch.no_grad():
        fused_inner = f(inner["ir"], inner["vis"])
    t_opt.zero_grad()
    t(TinySegmenter.to_task_input(fused_inner), inner["mask"]).backward()
    t_opt.step()
    f_opt = torch.optim.SGD(f.parameters(), lr=inner_lr)
    with torch.no_grad():
        w_ir = g(inner["crop_ir"], inner["crop_vis"])[:, :1]
    f_opt.zero_grad()
    _oracle_fusion_loss(f(inner["crop_ir"], inner["crop_vis"]), inner["crop_ir"], inner["crop_vis"], w_ir,
                        nets.form).backward()
    f_opt.step()
    with torch.no_grad():
        return t(TinySegmenter.to_task_input(f(outer["ir"], outer["vis"])), outer["mask"]).item()


@pytest.mark.parametrize("rule", ["sgd", "adam"])
@pytest.mark.parametrize("form", ["paper", "released"])
def test_meta_gradient_matches_real_optimizer_steps_float64(form, rule):
    """The directional derivative of an independent oracle (real SGD step of a copy of F, a real step of T's
    own optimizer on a copy of T, plain module calls) matches the project's autograd meta-gradient."""
    nets = make_nets(torch.float64)
    nets.form = form
    inner, outer = make_batch(dtype=torch.float64, seed=1), make_batch(dtype=torch.float64, seed=2)
    task_lr, inner_lr = 0.05, 0.5
    if rule == "sgd":
        t_opt = torch.optim.SGD(nets.task_net.parameters(), lr=task_lr)
    else:
        t_opt = torch.optim.Adam(nets.task_net.parameters(), lr=task_lr)
        for seed in (5, 6):  # real steps first, so T' reads non-trivial moments and step count
            b = make_batch(dtype=torch.float64, seed=seed)
            t_opt.zero_grad()
            nets.task_net(TinySegmenter.to_task_input(b["ir"]), b["mask"]).backward()
            t_opt.step()
        t_opt.zero_grad(set_to_none=True)
    hyper = MetaHyper(inner_lr=inner_lr, task_lr=task_lr, inner_task_step=rule,
                      loss=LossSettings(intensity_form=form))
    grads, loss_t, _ = meta_gradient(nets, inner, outer, hyper, t_optimizer=t_opt if rule == "adam" else None)

    base = {k: v.detach().clone() for k, v in nets.loss_gen.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in grads.items()}
    analytic = sum((grads[k] * direction[k]).sum() for k in grads).item()

    def oracle(eps):
        state = {k: v + eps * direction[k] if k in direction else v for k, v in base.items()}
        return _oracle_outer_loss(nets, state, inner, outer, inner_lr, t_opt)

    assert oracle(0.0) == pytest.approx(loss_t.item(), rel=1e-12)  # same objective at θ_G
    # eps 1e-5: larger steps cross the kinks of PReLU/LeakyReLU/|.|, smaller ones hit float64 rounding
    # (|L| ≈ 1, so the difference quotient is good to ~1e-6 relative here; measured 1e-7 … 1.5e-6)
    eps = 1e-5
    numeric = (oracle(eps) - oracle(-eps)) / (2 * eps)
    assert abs(analytic) > 1e-7, "meta-gradient vanished: the second-order path is missing"
    assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-12)
    # and the first-order-only shortcut (treating θ_F' as a constant) would give exactly zero
    assert all(float(g.abs().max()) > 0 for k, g in grads.items() if "project_out_1" in k)


def test_meta_step_leaves_f_and_t_untouched_and_moves_g():
    nets = make_nets()
    t_opt = torch.optim.Adam(nets.task_net.parameters(), lr=1e-3)
    # one real step so the functional Adam has moments to read
    nets.task_net(TinySegmenter.to_task_input(make_batch()["ir"]), make_batch()["mask"]).backward()
    t_opt.step()
    t_opt.zero_grad()
    f0 = copy.deepcopy(nets.fusion_net.state_dict())
    t0 = copy.deepcopy(nets.task_net.state_dict())
    t_state0 = copy.deepcopy(t_opt.state_dict())
    g0 = copy.deepcopy(nets.loss_gen.state_dict())
    hyper = MetaHyper(inner_lr=1e-4, task_lr=1e-3)
    res = meta_step(nets, make_batch(seed=1), make_batch(seed=2), hyper, "maxnorm", 1e-3, t_opt)
    for k, v in nets.fusion_net.state_dict().items():
        assert torch.equal(v, f0[k])
        assert nets.fusion_net.get_parameter(k).grad is None if k in dict(nets.fusion_net.named_parameters()) else True
    for k, v in nets.task_net.state_dict().items():
        assert torch.equal(v, t0[k])
    assert torch.equal(t_opt.state_dict()["state"][0]["exp_avg"], t_state0["state"][0]["exp_avg"])
    moved = max(float((v - g0[k]).abs().max()) for k, v in nets.loss_gen.state_dict().items())
    assert moved == pytest.approx(1e-3, rel=1e-5)  # max-normalised: the largest entry moves by exactly lr
    assert res.g_grad_max > 0 and res.loss_t_outer > 0


def test_functional_adam_equals_torch_adam():
    torch.manual_seed(0)
    net = TinySegmenter()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, eps=1e-8)
    batch = make_batch()
    for _ in range(2):  # builds moments; the third step is compared
        opt.zero_grad()
        net(TinySegmenter.to_task_input(batch["ir"]), batch["mask"]).backward()
        opt.step()
    opt.zero_grad()
    net(TinySegmenter.to_task_input(batch["vis"]), batch["mask"]).backward()
    named = dict(net.named_parameters())
    grads = {k: p.grad.clone() for k, p in named.items()}
    state = {k: opt.state[p] for k, p in named.items()}
    predicted = adam_update(named, grads, state, lr=3e-3)
    opt.step()
    for k, p in named.items():
        torch.testing.assert_close(predicted[k], p.detach(), rtol=1e-6, atol=1e-7)


def test_g_adam_rule_steps_with_optimizer():
    nets = make_nets()
    g_opt = torch.optim.Adam(nets.loss_gen.parameters(), lr=1e-3)
    grads = {k: torch.ones_like(p) for k, p in nets.loss_gen.named_parameters()}
    before = {k: p.detach().clone() for k, p in nets.loss_gen.named_parameters()}
    apply_g_update_(nets.loss_gen, grads, "adam", 1e-3, g_opt)
    for k, p in nets.loss_gen.named_parameters():
        torch.testing.assert_close(before[k] - p.detach(), torch.full_like(p, 1e-3), rtol=1e-4, atol=1e-8)
        assert p.grad is None


def _fusion_step_grads(ablations: Ablations, settings: LossSettings):
    nets = make_nets()
    f_net = WeightedAverageFusion(nets.loss_gen) if ablations.weighted_average else nets.fusion_net
    f_opt = torch.optim.SGD(f_net.parameters(), lr=0.0)  # lr 0: we only read the gradients
    t_opt = torch.optim.SGD(nets.task_net.parameters(), lr=0.0)
    res = fusion_step(f_net, nets.task_net, nets.loss_gen, TinySegmenter.to_task_input, make_batch(),
                      f_opt, t_opt, settings, ablations)
    return res, {k: p.grad.clone() for k, p in f_net.named_parameters()}


def test_ablation_switches_change_what_they_say():
    base_res, base_g = _fusion_step_grads(Ablations(), LossSettings())
    assert base_res.loss_t_through_f != base_res.loss_t_through_f  # NaN: no task loss reaches F
    # II: α = 0 removes the gradient term, so L_f shrinks
    nog_res, _ = _fusion_step_grads(Ablations(no_grad_loss=True), LossSettings(alpha=0.0))
    assert nog_res.loss_f < base_res.loss_f
    # I: w = ½ changes L_f but not the step structure
    fix_res, _ = _fusion_step_grads(Ablations(fixed_w=True), LossSettings(fixed_w=0.5))
    assert fix_res.loss_f != pytest.approx(base_res.loss_f)
    # III: F's gradient now includes L_t's
    iii_res, iii_g = _fusion_step_grads(Ablations(task_drives_f=True), LossSettings())
    assert iii_res.loss_t_through_f > 0
    assert any(not torch.allclose(iii_g[k], base_g[k]) for k in base_g)
    # V: the fused image is G's weighted average, trained by the task loss only
    v_res, v_g = _fusion_step_grads(Ablations(weighted_average=True), LossSettings())
    assert v_res.loss_f != v_res.loss_f and v_res.loss_t_through_f > 0
    assert all(k.startswith("loss_generator.") for k in v_g) and any(float(g.abs().max()) > 0 for g in v_g.values())


def test_ablation_phases_and_config():
    assert not Ablations(fixed_w=True).meta_phase and not Ablations(weighted_average=True).meta_phase
    assert not Ablations(no_fusion_phase=True).fusion_phase and Ablations().meta_phase
    cfg = build_config(overrides=["ablations=fixed_w,no_grad_loss", "fusion_net.dim=8", "lr=3e-4"])
    assert cfg.ablations == ["fixed_w", "no_grad_loss"] and cfg.fusion_net["dim"] == 8 and cfg.lr == 3e-4
    assert cfg.fusion_net["heads"] == 8  # the rest of the net's size keeps its default
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config(overrides=["epoch=3"])
    with pytest.raises(ConfigError, match="ablations"):
        build_config(overrides=["ablations=nonsense"])
    with pytest.raises(ConfigError, match="even"):
        TrainConfig(batch_size=3)
    defaults = TrainConfig()
    assert (defaults.epochs, defaults.meta_steps, defaults.lr, defaults.lr_step, defaults.lr_gamma,
            defaults.batch_size, defaults.swap, defaults.alpha, defaults.g_update) == \
        (40, 200, 1e-4, 10, 0.1, 2, True, 1.0, "maxnorm")


@pytest.mark.parametrize("ablation", ["fixed_w", "no_grad_loss", "task_drives_f", "no_fusion_phase", "weighted_average"])
def test_each_ablation_trains_end_to_end(tmp_path, ablation):
    from tdfusion_edge.train.trainer import Trainer

    tiny = "{dim: 4, num_blocks: 1, heads: 2}"
    cfg = build_config(overrides=[
        f"ablations={ablation}", "epochs=1", "meta_steps=1", "fusion_steps=1", "num_workers=0", "crop_size=24",
        "synthetic={train: 4, val: 1, image_size: [32, 48]}", f"fusion_net={tiny}", f"loss_generator={tiny}",
        "metric_samples=1", "weight_map_samples=1", "keep_epoch_checkpoints=false"])
    trainer = Trainer(cfg, tmp_path, progress=False)
    g_before = None if trainer.loss_gen is None else {k: v.clone() for k, v in trainer.loss_gen.state_dict().items()}
    (summary,) = trainer.fit()[1:]
    assert trainer.position.global_step == {"no_fusion_phase": 1, "fixed_w": 1, "weighted_average": 1}.get(ablation, 2)
    assert (trainer.loss_gen is None) == (ablation == "fixed_w")
    if ablation == "no_fusion_phase":
        assert "fusion_loss_f" in summary and "meta_loss_t_outer" in summary  # F, T step inside the meta step
    if ablation in ("fixed_w", "weighted_average"):
        assert "meta_loss_t_outer" not in summary
    if ablation == "weighted_average":
        assert not (tmp_path / "fusion_net.pt").exists() and (tmp_path / "loss_generator.pt").exists()
        assert summary["fusion_loss_t_via_f"] > 0
    if g_before is not None:  # G learns in every variant that has one (by meta-gradient or, in V, directly)
        assert any(not torch.equal(v, g_before[k]) for k, v in trainer.loss_gen.state_dict().items())
