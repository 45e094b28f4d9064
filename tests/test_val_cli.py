"""``tdfusion-edge val`` and ``benchmarks/task_benefit.py``, run as a user runs them, on a tiny generated
detection dataset (paired layout, YOLO labels) and, when present, on 4 val pairs of ../shared msrs_det."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MSRS_DET = Path(os.environ.get("TDFUSION_SHARED", REPO.parent / "shared")) / "data" / "msrs_det"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def tdfusion(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "tdfusion_edge.cli", *args], cwd, timeout)


def check_payload(path: Path, images: int, names: list[str]) -> dict:
    payload = json.loads(path.read_text())
    assert payload["images"] == images and payload["split"] == "val"
    m = payload["metrics"]
    for key in ("mAP50", "mAP50-95", "precision", "recall", "instances", "per_class"):
        assert key in m
    assert 0.0 <= m["mAP50-95"] <= m["mAP50"] <= 1.0
    assert [c["name"] for c in m["per_class"]] and {c["name"] for c in m["per_class"]} <= set(names)
    assert all({"mAP50", "mAP50-95", "instances", "images"} <= set(c) for c in m["per_class"])
    return payload


def test_val_single_modality_with_untrained_yolo(tiny_det, tmp_path):
    out = tdfusion(["val", "--data", str(tiny_det / "data.yaml"), "--split", "val", "--weights", "ir",
                    "--det", "yolov8n.yaml", "--imgsz", "64", "--json", str(tmp_path / "v.json")], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mAP50-95" in out.stdout and "\n" in out.stdout
    lines = out.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["class", "images", "instances"])
    table = [ln.split() for ln in lines[head + 1:head + 4]]
    assert [r[0] for r in table] == ["person", "car", "all"]
    assert table[-1][1:3] == ["2", "4"]  # 2 images, 4 boxes
    payload = check_payload(tmp_path / "v.json", 2, ["person", "car"])
    assert payload["input"] == {"kind": "ir"} and payload["metrics"]["instances"] == 4


def test_val_fuses_with_a_checkpoint_and_keeps_the_cache(tiny_det, tmp_path):
    from tdfusion_edge.checkpoints import save_checkpoint
    from tdfusion_edge.models import FusionNet, FusionNetConfig

    torch.manual_seed(0)
    ckpt = save_checkpoint(FusionNet(FusionNetConfig(dim=4, num_blocks=1, heads=2)), tmp_path / "f.pt")
    cache = tmp_path / "cache"
    args = ["val", "--data", str(tiny_det / "data.yaml"), "--weights", str(ckpt), "--det", "yolov8n.yaml",
            "--imgsz", "64", "--backend", "torch", "--cache", str(cache), "--json", str(tmp_path / "v.json")]
    out = tdfusion(args, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = check_payload(tmp_path / "v.json", 2, ["person", "car"])
    assert payload["input"]["kind"] == "fusion" and len(payload["input"]["sha256"]) == 64
    fused = cv2.imread(str(cache / "images" / "val" / "0004.png"), cv2.IMREAD_UNCHANGED)
    assert fused.shape == (64, 64, 3)  # fused luminance with the visible chroma
    assert (cache / "labels" / "val" / "0004.txt").read_text().count("\n") == 2
    # the same cache folder refuses another input instead of mixing images
    other = tdfusion([*args[:4], "vis", *args[5:]], tmp_path)
    assert other.returncode == 2 and "holds images of another input" in other.stderr


@pytest.mark.parametrize("bad, message", [(["--det", "missing.pt"], "not found"),
                                          (["--det", "nosuchdet"], "built-in: msrs"),
                                          (["--weights", "nope.pth"], "fusion weights"),
                                          (["--imgsz", "50"], "multiple of 32")])
def test_val_user_errors_are_one_line(tiny_det, tmp_path, bad, message):
    args = {"--weights": "ir", "--det": "yolov8n.yaml", "--imgsz": "64"}
    args.update(dict(zip(bad[::2], bad[1::2])))
    out = tdfusion(["val", "--data", str(tiny_det / "data.yaml"), *[x for kv in args.items() for x in kv]], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error:") and message in out.stderr
    assert "Traceback" not in out.stderr


def test_task_benefit_smoke_records_resumes_and_val_reproduces(tiny_det, tmp_path):
    out_dir = tmp_path / "tb"
    cmd = [sys.executable, str(REPO / "benchmarks" / "task_benefit.py"), "--data", str(tiny_det / "data.yaml"),
           "--smoke", "--out", str(out_dir)]
    first = run(cmd, tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[1/2] ir/seed0: training" in first.stderr and "[2/2] vis/seed0" in first.stderr
    summary = json.loads((out_dir / "summary.json").read_text())
    assert [r["input"] for r in summary["rows"]] == ["ir", "vis"]
    assert summary["schedule"]["epochs"] == 1 and summary["schedule"]["imgsz"] == 64
    for row in summary["rows"]:
        assert row["seeds"] == [0] and row["mAP50_std"] == 0.0 and 0.0 <= row["mAP50-95_mean"] <= row["mAP50_mean"]
    assert "| ir | 1 |" in (out_dir / "summary.md").read_text()
    runs = json.loads((out_dir / "results.json").read_text())["runs"]
    assert set(runs) == {"ir/seed0", "vis/seed0"}

    again = run(cmd, tmp_path, timeout=300)  # every run recorded: nothing is trained again
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done before, skipped") == 2 and "training" not in again.stderr.replace("trained", "")
    changed = run([*cmd, "--epochs", "2"], tmp_path, timeout=300)  # another schedule never mixes into the file
    assert changed.returncode == 2 and "another schedule" in changed.stderr

    # tdfusion-edge val on the same input and detector gives the recorded number
    best = runs["vis/seed0"]["best"]
    val = tdfusion(["val", "--data", str(tiny_det / "data.yaml"), "--weights", "vis", "--det", best,
                    "--imgsz", "64", "--batch", "2", "--json", str(tmp_path / "v.json")], tmp_path)
    assert val.returncode == 0, val.stderr[-2000:]
    got = json.loads((tmp_path / "v.json").read_text())["metrics"]
    assert got["mAP50"] == pytest.approx(runs["vis/seed0"]["metrics"]["mAP50"], abs=1e-9)
    assert got["mAP50-95"] == pytest.approx(runs["vis/seed0"]["metrics"]["mAP50-95"], abs=1e-9)

    # a longer schedule for one row, starting from that detector (a new --out; the schedule names it)
    longer = run([*cmd[:-1], str(tmp_path / "tb_more"), "--only", "vis", "--init-from", best], tmp_path, timeout=600)
    assert longer.returncode == 0, longer.stderr[-3000:]
    more = json.loads((tmp_path / "tb_more" / "results.json").read_text())
    assert more["schedule"]["model"] == str(Path(best).resolve()) and set(more["runs"]) == {"vis/seed0"}
    assert "Transferred" in longer.stdout + longer.stderr  # ultralytics loaded the given weights
    assert "Transferred" not in first.stdout + first.stderr  # (a run from the yaml has none to load)
    missing = run([*cmd[:-1], str(tmp_path / "tb_x"), "--init-from", str(tmp_path / "none.pt")], tmp_path)
    assert missing.returncode == 2 and "--init-from" in missing.stderr and "not found" in missing.stderr


@pytest.mark.skipif(not (MSRS_DET / "val.txt").is_file(), reason="needs ../shared/data/msrs_det")
def test_val_on_four_msrs_det_pairs(tmp_path):
    out = tdfusion(["val", "--data", "msrs_det.yaml", "--root", str(MSRS_DET), "--split", "val", "--weights", "vis",
                    "--det", "yolov8n.yaml", "--imgsz", "320", "--limit", "4", "--json", str(tmp_path / "v.json")],
                   tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = check_payload(tmp_path / "v.json", 4, ["person", "bicycle", "car"])
    assert payload["metrics"]["instances"] > 0 and " all " in out.stdout
