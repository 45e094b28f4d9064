"""INT8 on the CPU: a QDQ model of a small FusionNet at a tiny size, calibrated on a generated folder
of pairs, gated against FP32, cached; and ``auto`` never choosing a backend that fails its gate."""
from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from tdfusion_edge.export.auto_select import select_fastest
from tdfusion_edge.export.backends import FusionBackend, OnnxRuntimeInt8Backend, create_backend
from tdfusion_edge.export.int8_calib import PairSamples, split_indices
from tdfusion_edge.export.int8_onnx import Int8Options, Int8Rejected, count_quant_nodes

SHAPE = (32, 48)
# A random-weights network at 32×48 lands near 34 dB against FP32 (the released weights at 240×320:
# 37 dB, docs/export.md), so the tests judge it against 30 dB; the too-strict case uses 200 dB.
OPTS = dict(calib_count=6, gate_count=3, min_psnr_db=30.0)


@pytest.fixture(scope="module")
def net():
    """A small FusionNet (half width, one block per stage: half the graph, so export and calibration are quick)."""
    import torch

    from tdfusion_edge.models import FusionNet, FusionNetConfig

    torch.manual_seed(0)
    model = FusionNet(FusionNetConfig(dim=8, num_blocks=1, heads=2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """10 smooth IR/visible pairs (blobs and ramps, like a scene): PNG files in ir/ and vi/."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(3)
    for sub in ("ir", "vi"):
        (root / sub).mkdir()
    for i in range(10):
        base = cv2.GaussianBlur(rng.random((48, 64)).astype(np.float32), (0, 0), 4)
        base = (base - base.min()) / np.ptp(base)
        ir = np.clip(255 * (0.7 * base + 0.3 * (rng.random() > 0.5)), 0, 255).astype(np.uint8)
        vis = np.clip(255 * np.linspace(0.1, 0.9, 64)[None] * (0.5 + 0.5 * base[..., None].repeat(3, -1).mean(-1)),
                      0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "ir" / f"{i:02d}.png"), ir)
        cv2.imwrite(str(root / "vi" / f"{i:02d}.png"), cv2.merge([vis, vis, vis]))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("int8-cache")


@pytest.fixture(scope="module")
def int8(net, pairs, cache):
    return OnnxRuntimeInt8Backend(net, calib=pairs, imgsz=SHAPE, cache_dir=cache, threads=1,
                                  options=Int8Options(**OPTS))


def test_split_is_disjoint_and_spread():
    calib, held = split_indices(50, 16, 4)
    assert len(calib) == 16 and len(held) == 4 and not set(calib) & set(held)
    assert held[0] < 25 < held[-1]


def test_qdq_model_quantised_runs_and_passes_its_gate(int8, net, pairs):
    import onnx

    counts = count_quant_nodes(int8.onnx_path)
    assert counts["QuantizeLinear"] > 10 and counts["DequantizeLinear"] > 10
    assert int8.gate_report.passed and int8.gate_report.pairs == 3
    model = onnx.load(str(int8.onnx_path))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    # The statistics stay in float: no MatMul (LayerNorm stats, Gram matrices) or Sigmoid reads a dequantised tensor.
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Sigmoid", "Sqrt", "Softmax"):
            assert all(producer.get(i) != "DequantizeLinear" for i in node.input), node.name
    sample = PairSamples(pairs).luma(1, SHAPE)
    out = int8.fuse(sample["ir"][0, 0], sample["vis"][0, 0])
    ref = create_backend("torch", net=net, device="cpu").fuse(sample["ir"][0, 0], sample["vis"][0, 0])
    assert out.shape == SHAPE and np.isfinite(out).all()
    assert np.abs(out - ref).mean() < 0.02


def test_too_strict_gate_refuses_in_one_line(int8, net, pairs, cache):
    with pytest.raises(Int8Rejected) as info:
        OnnxRuntimeInt8Backend(net, calib=pairs, imgsz=SHAPE, cache_dir=cache, threads=1,
                               options=Int8Options(**(OPTS | {"min_psnr_db": 200.0})))
    text = str(info.value)
    assert "\n" not in text and "refused" in text and "200.0 dB" in text


def test_calibration_is_cached(int8, net, pairs, cache, caplog):
    stamp = int8.onnx_path.stat().st_mtime_ns
    opts = Int8Options(**OPTS)
    with caplog.at_level(logging.INFO, logger="tdfusion_edge.export.int8_onnx"):
        again = OnnxRuntimeInt8Backend(net, calib=pairs, imgsz=SHAPE, cache_dir=cache, threads=1, options=opts)
        no_data = OnnxRuntimeInt8Backend(net, calib=None, imgsz=SHAPE, cache_dir=cache, threads=1, options=opts)
    assert again.onnx_path == no_data.onnx_path == int8.onnx_path
    assert int8.onnx_path.stat().st_mtime_ns == stamp and caplog.text.count("reusing INT8 model") == 2
    record = json.loads(int8.onnx_path.with_name(int8.onnx_path.stem + ".gate.json").read_text())
    assert record["pairs"] == 3 and record["calib_pairs"] == 6
    with pytest.raises(Exception, match="--calib"):
        OnnxRuntimeInt8Backend(net, calib=None, imgsz=(40, 48), cache_dir=cache, threads=1, options=opts)


class _FastButWrong(FusionBackend):
    """Instant and wrong (inverted output): the fastest candidate, which its gate must keep out."""

    name = "fast-wrong"

    def _run(self, ir, vis):
        return 1.0 - ir


def test_auto_never_picks_a_backend_failing_its_gate(net, cache):
    ref = lambda: create_backend("torch", net=net, device="cpu", threads=1)  # noqa: E731
    backend, results = select_fastest([("torch", ref), ("fast-wrong", _FastButWrong)], SHAPE)
    assert backend.name == "torch"
    wrong = next(r for r in results if r.kind == "fast-wrong")
    assert wrong.ms is None and "failed its gate" in wrong.reason


def test_auto_measures_gates_and_caches_its_decision(int8, net, pairs, cache, caplog):
    strict = Int8Options(**(OPTS | {"min_psnr_db": 200.0}))
    with caplog.at_level(logging.INFO, logger="tdfusion_edge.export"):
        backend = create_backend("auto", net=net, imgsz=SHAPE, cache_dir=cache, threads=1, calib=pairs,
                                 int8_options=strict)
    assert backend.name != "onnxruntime-int8"            # refused by its (too strict) gate
    assert "onnxruntime-int8 left out" in caplog.text and "refused" in caplog.text and " ms" in caplog.text
    decision = json.loads(next((cache / "auto").glob("*.json")).read_text())
    assert decision["choice"] == backend.name and decision["shape"] == list(SHAPE)
    assert {m["kind"] for m in decision["measured"]} >= {"onnxruntime", "onnxruntime-int8", "torch"}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tdfusion_edge.export"):
        again = create_backend("auto", net=net, imgsz=SHAPE, cache_dir=cache, threads=1, calib=pairs,
                               int8_options=strict)
    assert again.name == backend.name and "cached decision" in caplog.text
