"""``tdfusion-edge train`` end to end in a subprocess: a config file plus overrides, a few steps on
synthetic data, the promised outputs, ``--resume`` continuing to a later epoch, one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tdfusion_edge.train.state import load_state

TINY = {"dim": 4, "num_blocks": 1, "heads": 2}


def cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tdfusion_edge.cli", "train", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def test_cli_trains_resumes_and_reports_errors(tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "synthetic": {"train": 4, "val": 2, "image_size": [32, 48]}, "crop_size": 24,
        "fusion_net": TINY, "loss_generator": TINY, "metric_samples": 1, "weight_map_samples": 2,
        "num_workers": 0}))
    out = tmp_path / "run"
    first = cli("--data", "synthetic", "--task", "seg", "--config", cfg_file, "--epochs", 1, "--meta-steps", 2,
                "--fusion-steps", 1, "--set", "g_update=adam", "--set", "lr=3e-4", "--out", out, "--no-progress")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "trained 1 epoch(s)" in first.stdout
    for name in ("last.pt", "best.pt", "fusion_net.pt", "loss_generator.pt", "best_fusion_net.pt",
                 "best_loss_generator.pt", "config.yaml", "train.log",
                 "weight_maps/epoch_000.png", "weight_maps/epoch_001.png"):
        assert (out / name).is_file(), name
    assert not (out / "epoch_001.pt").exists()  # per-epoch checkpoints only when asked for
    log = (out / "train.log").read_text()
    assert "epoch 1/1 | G: L_f" in log and "eval: mIoU" in log
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["g_update"] == "adam" and saved["lr"] == 3e-4 and saved["fusion_net"]["dim"] == 4

    again = cli("--resume", out / "last.pt", "--epochs", 2, "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "changed config key(s): epochs" in again.stderr
    state = load_state(out / "last.pt")
    assert state["position"] == {"epoch": 2, "phase": "meta", "step": 0, "global_step": 6}
    assert state["config"]["g_update"] == "adam"  # the resumed run kept the checkpoint's config
    assert not (out / "epoch_002.pt").exists()
    # best.pt is the epoch with the highest eval mIoU, across the resume
    scores = {int(e["epoch"]): e["eval_mIoU"] for e in state["history"] if "eval_mIoU" in e}
    assert sorted(scores) == [1, 2]
    best_epoch = max(scores, key=lambda k: (scores[k], -k))
    assert state["best"] == {"metric": "mIoU", "value": pytest.approx(scores[best_epoch]), "epoch": best_epoch}
    assert load_state(out / "best.pt")["position"]["epoch"] == best_epoch
    assert "epoch 2/2 |" in (out / "train.log").read_text()

    bad = cli("--data", "synthetic", "--set", "epoch=3", "--out", tmp_path / "bad")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: unknown config key(s): epoch;")
    missing = cli("--resume", tmp_path / "nowhere.pt")
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
