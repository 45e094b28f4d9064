"""INT8 YOLOv8n on the CPU: a QDQ model of ``yolov8n.yaml`` at a tiny size, calibrated on a generated
folder of pairs, gated against FP32 on the raw head outputs, cached; and the live app's
``--det-precision int8`` as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("ultralytics")

from tdfusion_edge.export import int8_detector as q  # noqa: E402
from tdfusion_edge.export.int8_onnx import Int8Rejected, count_quant_nodes  # noqa: E402
from tdfusion_edge.export.onnx_check import ort_session  # noqa: E402

from conftest import cli_env  # noqa: E402

SHAPE = (64, 96)
OPTS = q.DetInt8Options(calib_count=6, gate_count=3)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """10 IR/visible pairs of blobs and coloured rectangles (a scene-like spread of values), PNG in ir/ and vi/."""
    root = tmp_path_factory.mktemp("det-pairs")
    rng = np.random.default_rng(5)
    for sub in ("ir", "vi"):
        (root / sub).mkdir()
    for i in range(10):
        base = cv2.GaussianBlur(rng.random((60, 90)).astype(np.float32), (0, 0), 3)
        vis = np.repeat((255 * (base - base.min()) / np.ptp(base))[..., None], 3, -1).astype(np.uint8)
        for _ in range(3):
            x, y = rng.integers(0, 70), rng.integers(0, 40)
            cv2.rectangle(vis, (int(x), int(y)), (int(x) + 18, int(y) + 14), rng.integers(0, 255, 3).tolist(), -1)
        cv2.imwrite(str(root / "vi" / f"{i:02d}.png"), vis)
        cv2.imwrite(str(root / "ir" / f"{i:02d}.png"), cv2.cvtColor(vis, cv2.COLOR_BGR2GRAY))
    return root


@pytest.fixture(scope="module")
def model():
    import torch

    from tdfusion_edge.validation.detector import load_detector_model

    torch.manual_seed(0)
    return load_detector_model("yolov8n.yaml")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("det-int8-cache")


@pytest.fixture(scope="module")
def built(model, pairs, cache):
    return q.build_detector_int8_cached(model, SHAPE, pairs, OPTS, cache_dir=cache, threads=1)


def test_qdq_model_is_quantised_runs_and_passes_gate(built, pairs):
    assert built.created and built.path.is_file()
    counts = count_quant_nodes(built.path)
    assert counts["QuantizeLinear"] > 50 and counts["DequantizeLinear"] > 50
    assert count_quant_nodes(built.fp32_path)["QuantizeLinear"] == 0
    x = q.letterbox(cv2.imread(str(pairs / "vi" / "03.png")), SHAPE)[0]
    out, raw = ort_session(built.path, 1).run([q.OUTPUT, q.RAW_CLS], {q.INPUT: x})
    anchors = sum((SHAPE[0] // s) * (SHAPE[1] // s) for s in (8, 16, 32))
    assert out.shape == (1, 84, anchors) and raw.shape == (1, 80, anchors) and np.isfinite(out).all()
    r = built.report
    assert r.passed and r.frames == 3
    assert r.box_px <= OPTS.max_box_px and r.cls_rel <= OPTS.max_rel and r.topk_agree >= OPTS.min_topk
    assert 0 < r.cls_rel          # INT8 really differs from FP32: the gate measures something
    record = json.loads(built.path.with_name(built.path.name.replace(".onnx", ".gate.json")).read_text())
    assert record["calib_frames"] == 6 and record["quant_nodes"]["QuantizeLinear"] == counts["QuantizeLinear"]


def test_cache_is_reused(built, model, pairs, cache):
    again = q.build_detector_int8_cached(model, SHAPE, pairs, OPTS, cache_dir=cache)
    assert not again.created and again.path == built.path and again.report == built.report
    # Without calibration data the cached model of this network and size is found.
    assert q.build_detector_int8_cached(model, SHAPE, None, OPTS, cache_dir=cache).path == built.path


def test_too_strict_bound_refuses_in_one_line(built, model, pairs, cache):
    strict = q.DetInt8Options(calib_count=6, gate_count=3, max_rel=1e-9)
    got = q.build_detector_int8_cached(model, SHAPE, pairs, strict, cache_dir=cache)
    assert not got.created and not got.report.passed     # the cached record, re-judged
    with pytest.raises(Int8Rejected) as err:
        got.require_passed()
    assert "\n" not in str(err.value) and "INT8 detector refused" in str(err.value) and "rejected" in str(err.value)


def test_detector_shape_and_letterbox():
    assert q.detector_shape((240, 320)) == (256, 320)
    assert q.detector_shape((480, 640)) == (480, 640)
    assert q.detector_shape((480, 640), imgsz=320) == (256, 320)
    x, r, (top, left) = q.letterbox(np.zeros((240, 320, 3), np.uint8), (256, 320))
    assert x.shape == (1, 3, 256, 320) and r == 1.0 and (top, left) == (8, 0)
    assert np.allclose(x[0, :, :8], 114 / 255) and np.allclose(x[0, :, 8:248], 0)


def test_app_detector_letterboxes_runs_nms_and_maps_boxes_back(pairs, cache):
    from tdfusion_edge.apps.detection import OnnxYoloDetector

    frame = cv2.imread(str(pairs / "vi" / "04.png"))          # 60×90: letterboxed into 64×96
    det = OnnxYoloDetector("yolov8n.yaml", frame.shape[:2], conf=1e-6, calib=pairs, cache_dir=cache, threads=1)
    assert det.shape == SHAPE and det.gate_report.passed and "int8" in det.name
    found = det.detect(frame)   # an untrained head scores ~1e-4 everywhere: a tiny threshold exercises NMS
    assert 0 < len(found) < sum((SHAPE[0] // s) * (SHAPE[1] // s) for s in (8, 16, 32))
    b = found.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 90).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 60).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all() and found.scores.dtype == np.float32


def _live(args, pairs, cache):
    env = cli_env() | {"TDFUSION_EDGE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tdfusion_edge.cli", "live", "--ir", "synthetic", "--vis", "synthetic",
                           "--weights", "lite", "--backend", "onnxruntime", "--det", "yolov8n.yaml",
                           "--det-precision", "int8", "--no-realtime", *args],
                          capture_output=True, text=True, env=env, timeout=240)


def test_live_runs_the_int8_detector(pairs, tmp_path):
    stats = tmp_path / "stats.json"
    res = _live(["--calib", str(pairs), "--size", "64x96", "--max-frames", "4", "--stats", str(stats)],
                pairs, tmp_path / "cache")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "onnxruntime int8" in res.stderr and "→ kept" in res.stderr
    data = json.loads(stats.read_text())
    assert data["frames_out"] == 4 and data["latency_ms"]["detect"]["count"] >= 1
    assert list((tmp_path / "cache" / "int8").glob("detector-*-64x96-*-int8.onnx"))


def test_live_int8_detector_needs_a_size(pairs, tmp_path):
    res = _live(["--calib", str(pairs), "--max-frames", "2"], pairs, tmp_path / "cache")
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert lines == ["error: --det-precision int8 needs --size HxW (the detector runs at one static shape)"]
