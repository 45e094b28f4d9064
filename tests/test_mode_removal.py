"""The meta-gradient variant without the per-image brightness mode (train/mode_removal.py): the projection
itself, and the meta-gradient of θ_G it gives against an oracle that projects ∂L_t/∂w_ir by hand."""
from __future__ import annotations

import importlib

import pytest
import torch

from meta_nets import make_batch, make_nets
from tdfusion_edge.train.meta_step import LossSettings, MetaHyper, meta_gradient, meta_objective
from tdfusion_edge.train.mode_removal import project_out, remove_brightness_mode

meta_step_module = importlib.import_module("tdfusion_edge.train.meta_step")  # the module, not the function

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_project_out_is_the_per_image_orthogonal_projection():
    g = torch.Generator().manual_seed(0)
    grad, d = torch.randn(3, 1, 5, 6, generator=g, dtype=torch.float64), torch.randn(3, 1, 5, 6, generator=g,
                                                                                    dtype=torch.float64)
    d[2] = 0.0  # a flat pair: nothing to remove
    out = project_out(grad, d)
    dots = (out * d).flatten(1).sum(1)
    assert torch.allclose(dots[:2], torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.equal(out[2], grad[2])
    assert torch.allclose(project_out(out, d), out, atol=1e-12)  # idempotent
    # what is removed is a multiple of d, image by image
    for b in range(2):
        removed = (grad[b] - out[b]).flatten()
        coef = removed @ d[b].flatten() / (d[b].flatten() @ d[b].flatten())
        assert torch.allclose(removed, coef * d[b].flatten(), atol=1e-12)


def test_value_unchanged_gradient_loses_the_brightness_direction():
    ir, vis = torch.rand(2, 1, 4, 4, dtype=torch.float64), torch.rand(2, 1, 4, 4, dtype=torch.float64)
    w = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    out = remove_brightness_mode(w, ir, vis)
    assert torch.equal(out, w)
    # a task that only wants "more of the brighter source" gives G nothing to learn
    (grad,) = torch.autograd.grad((out * 3.0 * (ir - vis)).sum(), w)
    assert grad.abs().max() < 1e-12
    noise = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad((remove_brightness_mode(w, ir, vis) * noise).sum(), w)
    assert torch.allclose(grad, project_out(noise, ir - vis), atol=1e-12)


def test_meta_gradient_of_the_variant_matches_the_hand_projected_oracle(monkeypatch):
    nets = make_nets(torch.float64)
    inner, outer = make_batch(dtype=torch.float64, seed=1), make_batch(dtype=torch.float64, seed=2)
    hyper = MetaHyper(inner_lr=0.5, task_lr=0.05, inner_task_step="sgd",
                      loss=LossSettings(remove_brightness_mode=True))
    got, _, _ = meta_gradient(nets, inner, outer, hyper)

    # oracle: ∂L_t/∂w_ir with w_ir a leaf (plain settings), projected by hand, pulled back through G
    g_params = dict(nets.loss_gen.named_parameters())
    w = nets.loss_gen(inner["crop_ir"], inner["crop_vis"])[:, :1]
    leaf = w.detach().requires_grad_()
    monkeypatch.setattr(meta_step_module, "weight_ir", lambda *a, **k: leaf)
    plain = MetaHyper(inner_lr=0.5, task_lr=0.05, inner_task_step="sgd", loss=LossSettings())
    loss_t, _ = meta_objective(nets, g_params, inner, outer, plain)
    (dl_dw,) = torch.autograd.grad(loss_t, leaf)
    projected = project_out(dl_dw, inner["crop_ir"] - inner["crop_vis"])
    want = torch.autograd.grad(w, list(g_params.values()), grad_outputs=projected, allow_unused=True,
                               retain_graph=True)
    raw = torch.autograd.grad(w, list(g_params.values()), grad_outputs=dl_dw, allow_unused=True)
    for (name, g_got), g_want, g_raw in zip(got.items(), want, raw):
        g_want = torch.zeros_like(g_got) if g_want is None else g_want
        assert torch.allclose(g_got, g_want, rtol=1e-9, atol=1e-14), name
    # and it is a different gradient from the released one (the mode was there to remove)
    differs = max(float((g_got - (torch.zeros_like(g_got) if g_raw is None else g_raw)).abs().max())
                  for g_got, g_raw in zip(got.values(), raw))
    assert differs > 1e-6 * max(float(g.abs().max()) for g in got.values())
