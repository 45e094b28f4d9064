"""``tdfusion-edge export`` as a user runs it (subprocess): writes a checked ONNX and reports parity;
one-line errors for impossible options; on the released weights and RoadScene pairs, onnxruntime
matches PyTorch within 1e-4."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import cli_env

from tdfusion_edge.checkpoints import save_checkpoint
from tdfusion_edge.models import FusionNet, FusionNetConfig


def tdf(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "tdfusion_edge.cli", "export", *map(str, args)],
                          capture_output=True, text=True, env=cli_env(), cwd=cwd, timeout=timeout)


def parity_values(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"max abs diff ([0-9.eE+-]+)", text)]


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    torch.manual_seed(0)
    net = FusionNet(FusionNetConfig(dim=8, num_blocks=1, heads=4))
    return save_checkpoint(net, tmp_path_factory.mktemp("w") / "small.pt")


def test_export_onnx_writes_checked_model_and_parity(small_weights, tmp_path):
    out = tmp_path / "fusion.onnx"
    res = tdf("--weights", small_weights, "--format", "onnx", "--imgsz", 48, 64, "--out", out)
    assert res.returncode == 0, res.stderr
    assert out.is_file()
    assert f"wrote {out}" in res.stdout and "opset 17" in res.stdout and "onnx.checker: passed" in res.stdout
    assert "exporting to ONNX (48×64, fp32)" in res.stdout and "parity check" in res.stderr  # progress (tqdm)
    values = parity_values(res.stdout)
    assert values and max(values) <= 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ir", "vis"]
    assert list(session.get_inputs()[0].shape) == [1, 1, 48, 64]


@pytest.mark.parametrize("args, match", [
    (["--format", "onnx", "--imgsz", 64, 64, "--int8", "--calib", "."], "--format engine"),
    (["--format", "engine", "--imgsz", 64, 64, "--int8"], "--calib"),
    (["--format", "onnx"], "--imgsz"),
    (["--format", "engine", "--dynamic"], "per camera resolution"),
    (["--format", "onnx", "--imgsz", 60, 64, "--det", "yolov8n.yaml"], "multiples of 32"),
    (["--format", "onnx", "--imgsz", 64, 64, "--det", "missing_yolo.pt"], "not found on disk"),
])
def test_export_errors_are_one_line(small_weights, tmp_path, args, match):
    res = tdf("--weights", small_weights, *args, cwd=tmp_path)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], res.stderr


def test_export_engine_without_tensorrt_is_one_line(small_weights, tmp_path):
    from tdfusion_edge.export.trt_import import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    res = tdf("--weights", small_weights, "--format", "engine", "--imgsz", 64, 64, "--half", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: TensorRT is not installed")
    assert len(res.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())                     # failed before writing anything


def test_released_weights_on_roadscene_pairs(released_weights, roadscene, tmp_path):
    out = tmp_path / "refusion.onnx"
    res = tdf("--weights", released_weights, "--format", "onnx", "--imgsz", 240, 320, "--out", out,
              "--check-pairs", roadscene, "--check-count", 2)
    assert res.returncode == 0, res.stderr
    real = [line for line in res.stdout.splitlines() if "real pair" in line]
    assert len(real) == 1 and "2 real pair(s)" in real[0]
    assert max(parity_values(real[0])) <= 1e-4
    # and onnxruntime alone runs it on a real pair, giving a plausible fused image
    from tdfusion_edge.export.calibration import CalibrationBatches
    from tdfusion_edge.export.onnx_check import ort_session

    feed = CalibrationBatches(roadscene, (240, 320)).sample(0)
    fused = ort_session(out, threads=2).run(None, feed)[0]
    assert fused.shape == (1, 1, 240, 320) and 0.0 <= fused.min() < fused.max() <= 1.0
    assert np.corrcoef(fused.ravel(), feed["vis"].ravel())[0, 1] > 0.3
