"""The meta-gradient probe: its per-pixel gradient is eq. 7's (finite differences, float64), and the
command prints its table on synthetic night scenes, or a one-line error without known IR-only objects."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from meta_nets import make_batch, make_nets
from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.train.meta_probe import FreeWeights, probe_batches, probe_pair
from tdfusion_edge.train.meta_step import LossSettings, MetaHyper, meta_objective

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _with_objects(batch):
    objects = torch.zeros_like(batch["mask"], dtype=torch.bool)
    objects[:, 2:6, 3:8] = True
    return {**batch, "ir_only": objects}


def test_probe_gradient_matches_finite_differences_float64():
    nets = make_nets(torch.float64)
    inner, outer = _with_objects(make_batch(dtype=torch.float64, seed=1)), _with_objects(make_batch(dtype=torch.float64, seed=2))
    hyper = MetaHyper(inner_lr=0.5, task_lr=0.05, inner_task_step="sgd", loss=LossSettings())
    result = probe_pair(nets, hyper, inner, outer)

    objects = inner["ir_only"][0]

    def outer_loss(eps):
        logits = torch.zeros((2, 2, 10, 10), dtype=torch.float64)
        logits[0, 0][objects] += eps
        free = FreeWeights(logits)
        probe_nets = type(nets)(nets.fusion_net, free, nets.task_net, nets.to_task_input)
        return meta_objective(probe_nets, dict(free.named_parameters()), inner, outer, hyper)[0].item()

    eps = 1e-5
    numeric = (outer_loss(eps) - outer_loss(-eps)) / (2 * eps) / int(objects.sum())
    assert result.grad_objects != 0
    assert result.grad_objects == pytest.approx(numeric, rel=1e-5)
    assert result.loss_t == pytest.approx(outer_loss(0.0))
    assert result.response_objects != 0 and result.response_background != 0


def test_probe_needs_known_ir_only_objects():
    with pytest.raises(TDFusionError, match="data=synthetic"):
        next(probe_batches([{"ir": torch.zeros(1, 4, 4)}], 1, True, torch.device("cpu")))


def test_probe_command_prints_its_table():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tiny = "{dim: 4, num_blocks: 1, heads: 2}"
    args = ["--set", "synthetic={train: 4, val: 4, image_size: [32, 48], condition: night}", "--set", "crop_size=24",
            "--set", f"fusion_net={tiny}", "--set", f"loss_generator={tiny}", "--set", "num_workers=0",
            "--warm", "2", "--pairs", "2"]
    run = subprocess.run([sys.executable, "-m", "tdfusion_edge.train.meta_probe", *args], capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].split()[:2] == ["pair", "dLt/dw"] and lines[3].startswith("mean")
    assert "F' response objects / background:" in lines[-1]
    # the long loops show progress (on stderr, so the table on stdout stays clean)
    assert "warm-up: learning F, T" in run.stderr and "probing meta-train/meta-test pairs" in run.stderr
    bad = subprocess.run([sys.executable, "-m", "tdfusion_edge.train.meta_probe", "--set", "epochs=0"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "epochs" in bad.stderr
