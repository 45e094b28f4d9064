"""Training defaults a user can trust, on a real detection layout: ``--root`` for a dataset YAML, F from the
built-in weights (init_fusion auto), best.pt by mAP50-95, no per-epoch checkpoints; and what G learned,
in numbers (``train/weight_stats.py``, ``benchmarks/weight_stats.py``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tdfusion_edge.checkpoints import default_weights_path, load_model
from tdfusion_edge.train.config import build_config
from tdfusion_edge.train.state import load_state
from tdfusion_edge.train.trainer import Trainer
from tdfusion_edge.train.weight_stats import box_mask, condition_of, weight_statistics

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = "{dim: 4, num_blocks: 1, heads: 2}"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class IrAsWeight(nn.Module):
    """A stand-in G whose w_ir is the infrared image itself: every region's mean is known."""

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        return torch.cat([ir, 1 - ir], dim=1)


def test_box_mask_and_conditions():
    boxes = torch.tensor([[0, 1.2, 2.0, 4.0, 5.5], [1, 6.0, 0.0, 9.0, 3.0]])
    m = box_mask(boxes, 6, 8)
    assert m.sum() == 3 * 4 + 2 * 3  # x 1..3, y 2..5 ; x 6..7 (clipped at 8), y 0..2
    assert m[2:6, 1:4].all() and m[0:3, 6:8].all() and not m[0, 0]
    assert box_mask(boxes, 6, 8, cls=1).sum() == 6
    assert [condition_of(n) for n in ("00016N", "01234D", "frame_7")] == ["night", "day", "other"]


def test_weight_statistics_recovers_known_region_means():
    ir = torch.zeros(1, 8, 10)
    ir[:, 2:6, 1:5] = 1.0  # the object is hot; the background is cold
    vis = torch.full((1, 8, 10), 0.5)
    boxes = torch.tensor([[0, 1.0, 2.0, 5.0, 6.0]])
    samples = [{"ir": ir, "vis": vis, "boxes": boxes, "name": "0001N"},
               {"ir": ir * 0.25, "vis": vis, "boxes": boxes, "name": "0002D"}]
    stats = weight_statistics(IrAsWeight(), samples, ["person", "car"])
    assert stats["frames"] == {"night": 1, "day": 1}
    assert stats["night"]["objects"] == pytest.approx(1.0) and stats["night"]["background"] == pytest.approx(0.0)
    assert stats["day"]["objects"] == pytest.approx(0.25)
    assert stats["all"]["objects"] == pytest.approx(0.625) and stats["all"]["person"] == pytest.approx(0.625)
    assert "car" not in stats["all"]  # no car boxes: no mean rather than a made-up one
    # night: w > ½ exactly where ir > vis (all pixels agree); day: the object (16 px) has w 0.25 < ½ but
    # ir 0.25 < vis too, so it agrees as well
    assert stats["agree_with_brighter_source"] == pytest.approx(1.0)
    assert stats["corr_with_ir_minus_vis"] == pytest.approx(1.0)
    # the brightness rule on the same regions: night object hot (1), background cold (0); day object 0.25 < ½
    assert stats["brighter_source_rule"]["night"]["objects"] == 1.0
    assert stats["brighter_source_rule"]["night"]["background"] == 0.0
    assert stats["brighter_source_rule"]["day"]["objects"] == 0.0


def test_init_fusion_auto_starts_from_the_built_in_weights_only_at_their_size():
    common = ["synthetic={train: 4, val: 2, image_size: [32, 48]}", "crop_size=24", "num_workers=0",
              "metric_samples=1", "weight_map_samples=1", f"loss_generator={TINY}"]
    built_in, _ = load_model(default_weights_path(), "FusionNet")
    auto = Trainer(build_config(overrides=common), "unused", progress=False)
    for k, v in built_in.state_dict().items():
        assert torch.equal(auto.fusion.state_dict()[k], v), k
    tiny = Trainer(build_config(overrides=common + [f"fusion_net={TINY}"]), "unused", progress=False)
    assert tiny.fusion.config.dim == 4  # another size: from scratch, no error
    with pytest.raises(Exception, match=r"init_fusion default has size .*\(--set init_fusion=null"):
        Trainer(build_config(overrides=common + [f"fusion_net={TINY}", "init_fusion=default"]), "unused",
                progress=False)


def test_det_training_with_root_keeps_best_and_weight_stats_runs(tiny_det, tmp_path):
    elsewhere = tmp_path / "yaml_elsewhere"
    elsewhere.mkdir()
    data = elsewhere / "det.yaml"  # its path: does not exist; --root points at the data
    data.write_text("path: no/such/folder\nlayout: paired\ntask: det\ntrain: train.txt\nval: val.txt\n"
                    "names: [person, car]\nkeep_empty: true\ntask_size: [64, 64]\ncrop_size: 32\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tdfusion_edge.cli", "train", "--data", str(data), "--root", str(tiny_det),
           "--task", "det", "--epochs", "1", "--meta-steps", "1", "--fusion-steps", "1", "--workers", "0",
           "--set", "task_weights=yolov8n.yaml", "--set", f"fusion_net={TINY}", "--set", f"loss_generator={TINY}",
           "--set", "metric_samples=1", "--set", "weight_map_samples=1", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_state(out / "last.pt")
    assert state["config"]["data_root"] == str(tiny_det)
    assert state["best"]["metric"] == "mAP50-95" and state["best"]["epoch"] == 1
    assert (out / "best.pt").is_file() and (out / "best_loss_generator.pt").is_file()
    assert not list(out.glob("epoch_*.pt"))
    assert "F starts from scratch" in proc.stderr

    # resumed from another folder: the absolute root still finds the data
    again = subprocess.run([sys.executable, "-m", "tdfusion_edge.cli", "train", "--resume", str(out / "last.pt"),
                            "--epochs", "2", "--no-progress"], cwd=elsewhere, env=ENV, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert load_state(out / "last.pt")["position"]["epoch"] == 2

    stats_dir = tmp_path / "stats"
    ws = subprocess.run([sys.executable, str(REPO / "benchmarks" / "weight_stats.py"), "--loss-gen",
                         str(out / "best_loss_generator.pt"), "--fusion", str(out / "best_fusion_net.pt"),
                         "--data", str(data), "--root", str(tiny_det), "--out", str(stats_dir), "--frames", "2"],
                        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert ws.returncode == 0, ws.stderr[-3000:]
    stats = json.loads((stats_dir / "weight_stats.json").read_text())
    for key in ("trained", "initialised_seed0"):
        assert stats[key]["frames"] == {"other": 2}
        assert 0.0 < stats[key]["all"]["objects"] < 1.0 and 0.0 < stats[key]["all"]["background"] < 1.0
        assert stats[key]["all"]["pixels"]["objects"] + stats[key]["all"]["pixels"]["background"] == 2 * 64 * 64
    assert (stats_dir / "weight_maps.png").stat().st_size > 10_000
