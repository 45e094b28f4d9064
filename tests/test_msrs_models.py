"""The built-in MSRS models, as a user meets them on a fresh install: ``tdfusion-msrs`` (F + G trained here by
TDFusion on MSRS detection) and ``msrs`` (YOLOv8n trained on its fused images). Their files are plain
tensors + JSON facts; on real MSRS frames (when ../shared is present) the pair fuses and detects, and
``val`` gives the number the docs' table and the detector's metadata record."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdfusion_edge.checkpoints import load_model, resolve_detector_name, resolve_weights
from tdfusion_edge.validation.detector import load_detector_model

REPO = Path(__file__).resolve().parents[1]
MSRS_DET = Path(os.environ.get("TDFUSION_SHARED", REPO.parent / "shared")) / "data" / "msrs_det"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
needs_msrs = pytest.mark.skipif(not (MSRS_DET / "val.txt").is_file(), reason="needs ../shared/data/msrs_det")


def _cli(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdfusion_edge.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_files_are_small_safe_and_say_how_they_were_made():
    for name, kind in (("tdfusion-msrs", "FusionNet"), ("tdfusion-msrs", "LossGenerator")):
        path = resolve_weights(name, kind)
        assert path.stat().st_size < 1_000_000
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        model, info = load_model(name, kind)
        prov = info["provenance"]
        assert "msrs_det train split" in prov["data"] and prov["best"]["metric"] == "mAP50-95"
        assert prov["config"]["meta_steps"] > 0 and prov["config"]["init_fusion"] == "default"
    det = Path(resolve_detector_name("msrs"))
    assert det.stat().st_size < 4_000_000  # int8-stored weights (3.2 MB; fp16 would be 6.2)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(det) == []
    raw = torch.load(det, weights_only=True)
    assert raw["provenance"]["classes"] == "person, bicycle, car" and "val_mAP50-95" in raw["provenance"]
    model = load_detector_model("msrs")
    assert model.names == {0: "person", 1: "bicycle", 2: "car"}
    # and as a training warm start (--set task_weights=msrs): every weight transferred
    from tdfusion_edge.tasks import build_task

    task = dict(build_task("det", 3, "msrs", names=["person", "bicycle", "car"]).model.named_parameters())
    src = model.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in task.items() if k in src) and "model.0.conv.weight" in task


def _night_pairs_with_people(count: int) -> list[str]:
    stems = [s for s in (MSRS_DET / "val.txt").read_text().split() if s.endswith("N")]
    with_people = [s for s in stems if any(line.split()[0] == "0" for line in
                                           (MSRS_DET / "labels" / f"{s}.txt").read_text().splitlines() if line.strip())]
    return with_people[:count]


@needs_msrs
def test_live_fuses_and_detects_people_on_msrs_night_frames(tmp_path):
    stems = _night_pairs_with_people(6)
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for s in stems:
            (tmp_path / sub / f"{s}.png").symlink_to(MSRS_DET / sub / f"{s}.png")
    out = _cli(["live", "--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vi"), "--no-realtime",
                "--weights", "tdfusion-msrs", "--det", "msrs", "--det-imgsz", "320", "--jsonl",
                str(tmp_path / "d.jsonl"), "--max-frames", str(len(stems)), "--no-hud"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(records) == len(stems)
    people = [d for r in records for d in r["detections"] if d["name"] == "person"]
    assert len(people) >= len(stems) // 2, [r["detections"] for r in records]


@needs_msrs
@pytest.mark.timeout(1200)
def test_val_with_the_built_in_models_gives_the_recorded_number(tmp_path):
    out = _cli(["val", "--data", "msrs_det.yaml", "--root", str(MSRS_DET), "--split", "val", "--weights",
                "tdfusion-msrs", "--det", "msrs", "--imgsz", "320", "--json", str(tmp_path / "v.json")], tmp_path,
               timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads((tmp_path / "v.json").read_text())["metrics"]
    recorded = torch.load(resolve_detector_name("msrs"), weights_only=True)["provenance"]
    assert got["mAP50-95"] == pytest.approx(float(recorded["shipped_val_mAP50-95"]), abs=5e-5)
    assert got["mAP50"] == pytest.approx(float(recorded["shipped_val_mAP50"]), abs=5e-5)
    # the fp16 file scores what the fp32 training run did, to fp16 rounding
    assert got["mAP50-95"] == pytest.approx(float(recorded["val_mAP50-95"]), abs=2e-3)
