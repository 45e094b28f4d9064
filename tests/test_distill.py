"""`tdfusion-edge distill` as a user runs it: a tiny run learns, a resumed run equals an uninterrupted one,
bad input is one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tdfusion_edge.checkpoints import save_checkpoint
from tdfusion_edge.models import FusionNet, FusionNetConfig


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TDFUSION_EDGE_CACHE": str(cwd / "engine_cache")}
    return subprocess.run([sys.executable, "-m", "tdfusion_edge.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Six generated 48×64 pairs (gray IR, colour visible) and a tiny FusionNet teacher checkpoint."""
    root = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(0)
    (root / "pairs" / "ir").mkdir(parents=True)
    (root / "pairs" / "vi").mkdir()
    for i in range(6):
        base = cv2.GaussianBlur(rng.random((48, 64)).astype(np.float32), (0, 0), 3)
        ir = (np.clip(base * 3 - 0.8, 0, 1) * 255).astype(np.uint8)
        vis = (np.clip(1 - base * 2 + rng.random((48, 64)) * 0.2, 0, 1) * 255).astype(np.uint8)
        cv2.imwrite(str(root / "pairs" / "ir" / f"p{i}.png"), ir)
        cv2.imwrite(str(root / "pairs" / "vi" / f"p{i}.png"), cv2.cvtColor(vis, cv2.COLOR_GRAY2BGR))
    torch.manual_seed(0)
    save_checkpoint(FusionNet(FusionNetConfig(dim=8, num_blocks=1, heads=2)), root / "teacher.pt")
    return root


def _distill(ws: Path, out: str, *extra: str) -> subprocess.CompletedProcess:
    return _cli("distill", "--teacher", str(ws / "teacher.pt"), "--teacher-backend", "torch",
                "--data", str(ws / "pairs"), "--out", str(ws / out), "--cache", str(ws / "cache"),
                "--batch", "2", "--crop", "32", "--scales", "1", "--threads", "1", "--val-fraction", "0",
                "--log-every", "5", "--no-progress", *extra, cwd=ws)


def test_tiny_distill_lowers_its_loss(workspace):
    res = _distill(workspace, "learn", "--steps", "40", "--lr", "3e-3")
    assert res.returncode == 0, res.stderr[-2000:]
    out = workspace / "learn"
    losses = [row["loss"] for row in json.loads((out / "history.json").read_text()) if "loss" in row]
    assert len(losses) == 8
    assert losses[-1] < 0.8 * losses[0], losses
    assert (out / "last.pt").is_file() and (out / "distill.log").read_text().count("step 40") >= 1
    from tdfusion_edge.checkpoints import load_fusion_net
    from tdfusion_edge.models import LiteFusionNet

    model = load_fusion_net(out / "lite_fusion_net.pt")
    assert isinstance(model, LiteFusionNet)
    prov = torch.load(out / "lite_fusion_net.pt", weights_only=True)["provenance"]
    assert prov["steps"] == 40 and "teacher.pt" in prov["teacher"] and prov["commit"]


def test_resume_equals_uninterrupted(workspace):
    full = _distill(workspace, "full", "--steps", "8", "--checkpoint-every", "4")
    assert full.returncode == 0, full.stderr[-2000:]
    part = _distill(workspace, "part", "--steps", "8", "--checkpoint-every", "4", "--stop-after", "4")
    assert part.returncode == 0, part.stderr[-2000:]
    assert torch.load(workspace / "part" / "last.pt", weights_only=True)["step"] == 4
    resumed = _cli("distill", "--resume", str(workspace / "part" / "last.pt"), "--no-progress", cwd=workspace)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(workspace / "full" / "last.pt", weights_only=True)
    b = torch.load(workspace / "part" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 8
    for key, value in a["student"].items():
        assert torch.equal(value, b["student"][key]), key
    timeless = lambda h: [{k: v for k, v in row.items() if k != "sec"} for row in h]  # noqa: E731
    assert timeless(a["history"]) == timeless(b["history"]) and len(a["history"]) == 1


@pytest.mark.parametrize("args, message", [
    (["--data", "no_such_dir", "--out", "o"], "data folder not found: no_such_dir"),
    (["--data", "pairs/ir", "--out", "o"], "needs ir/ and vi/"),
    (["--data", "pairs", "--out", "o", "--teacher", "missing.pt"], "checkpoint not found"),
    (["--data", "pairs", "--out", "o", "--crop", "4"], "--crop must be at least 16"),
    (["--data", "pairs", "--out", "o", "--refine-hidden", "9"], "refine_hidden must be 0..4, got 9"),
    (["--resume", "teacher.pt"], "is not a training checkpoint"),
])
def test_bad_input_is_one_line(workspace, args, message):
    res = _cli("distill", "--teacher-backend", "torch", "--no-progress", *args, cwd=workspace)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "INFO" not in ln and "Warning" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def test_a_state_from_before_the_refiner_fields_resumes_the_network_it_trained():
    from tdfusion_edge.train.distill import DistillConfig

    old = DistillConfig.from_dict({"data": ["x"], "width": 32, "factor": 4, "refine": 8})
    assert (old.refine, old.refine_hidden, old.refine_context) == (8, 0, False)
    new = DistillConfig.from_dict(DistillConfig(data=["x"]).to_dict())
    assert (new.refine, new.refine_hidden, new.refine_context) == (16, 1, True)
