"""The TensorRT path in the parts that need no TensorRT: cache keys, model hashes, shape plans, argument
checks, the calibration batch stream, the INT8 quality gate, FP32 layer pinning (on a stand-in
network), and one clear line from every entry point where TensorRT is missing."""
from __future__ import annotations

import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tdfusion_edge.checkpoints import save_checkpoint
from tdfusion_edge.export.calibration import CalibrationBatches, find_pair_folders
from tdfusion_edge.export.engine_cache import CacheKey, cache_root, model_hash, produce_once
from tdfusion_edge.export.errors import ExportError, TensorRTUnavailable
from tdfusion_edge.export.graph_parts import GraphOptions
from tdfusion_edge.export.quality_gate import measure_quality, psnr
from tdfusion_edge.export.tensorrt_build import EngineOptions, pin_fp32_layers, shape_plan, trtexec_command
from tdfusion_edge.export.trt_import import tensorrt_available
from tdfusion_edge.models import FusionNet

no_trt = pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")


def test_cache_key_names_every_field_and_checks_values(tmp_path):
    base = CacheKey("ab" * 32, "fp16", (480, 640), 1, "float-none", device="NVIDIA Orin sm87", runtime="10.3.0")
    variants = [CacheKey("cd" * 32, "fp16", (480, 640), 1, "float-none", "NVIDIA Orin sm87", "10.3.0"),
                CacheKey("ab" * 32, "fp32", (480, 640), 1, "float-none", "NVIDIA Orin sm87", "10.3.0"),
                CacheKey("ab" * 32, "fp16", (480, 641), 1, "float-none", "NVIDIA Orin sm87", "10.3.0"),
                CacheKey("ab" * 32, "fp16", (480, 640), 2, "float-none", "NVIDIA Orin sm87", "10.3.0"),
                CacheKey("ab" * 32, "fp16", (480, 640), 1, "u8-ir1-vis3-minmax", "NVIDIA Orin sm87", "10.3.0"),
                CacheKey("ab" * 32, "fp16", (480, 640), 1, "float-none", "NVIDIA RTX 4090 sm89", "10.3.0"),
                CacheKey("ab" * 32, "fp16", (480, 640), 1, "float-none", "NVIDIA Orin sm87", "8.6.2")]
    stems = {k.stem() for k in variants} | {base.stem()}
    assert len(stems) == len(variants) + 1
    assert base.engine_path(tmp_path).parent == tmp_path / "engines"
    assert base.engine_path(tmp_path).name.endswith(".engine") and "/" not in base.stem()
    assert "dynHW" in CacheKey("ab" * 32, shape=None, batch=None).stem()
    with pytest.raises(ValueError, match="engine key"):
        CacheKey("ab" * 32, shape=(8, 8)).engine_path(tmp_path)
    with pytest.raises(ValueError, match="precision"):
        CacheKey("ab" * 32, "bf16")
    with pytest.raises(ValueError, match="shape"):
        CacheKey("ab" * 32, shape=(0, 8))


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("TDFUSION_EDGE_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("TDFUSION_EDGE_CACHE")
    assert cache_root() == Path.home() / ".cache" / "tdfusion-edge"


def test_model_hash_is_by_value_and_format_independent(tmp_path):
    from tdfusion_edge.checkpoints import load_fusion_net

    torch.manual_seed(0)
    net = FusionNet().eval()
    reloaded = load_fusion_net(save_checkpoint(net, tmp_path / "a.pt"))
    assert model_hash(net) == model_hash(reloaded)
    with torch.no_grad():
        reloaded.project_out_1.weight[0, 0, 0, 0] += 1e-3
    assert model_hash(net) != model_hash(reloaded)


def test_produce_once_reuses_and_leaves_no_temp_on_failure(tmp_path):
    calls = []

    def make(tmp: Path) -> None:
        calls.append(tmp)
        tmp.write_bytes(b"engine")

    target = tmp_path / "engines" / "x.engine"
    assert produce_once(target, make) == (target, True)
    assert produce_once(target, make) == (target, False)
    assert len(calls) == 1 and target.read_bytes() == b"engine"

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError):
        produce_once(tmp_path / "engines" / "y.engine", fail)
    assert sorted(p.name for p in (tmp_path / "engines").iterdir()) == ["x.engine"]


def test_shape_plan_float_and_uint8():
    plan = shape_plan(GraphOptions(), (480, 640), batch=2)
    assert plan["ir"] == ((2, 1, 480, 640),) * 3
    plan = shape_plan(GraphOptions(io="uint8", ir_channels=1, vis_channels=3), (240, 320), batch=2, max_batch=8)
    assert plan["ir"] == ((1, 240, 320, 1), (2, 240, 320, 1), (8, 240, 320, 1))
    assert plan["vis"][2] == (8, 240, 320, 3)


def test_engine_options_argument_checks(tmp_path):
    EngineOptions((480, 640)).validate()
    EngineOptions((480, 640), "int8", calib_dir=str(tmp_path)).validate()
    for bad, match in [(dict(precision="int4"), "precision"), (dict(precision="int8"), "--calib"),
                       (dict(precision="int8", calib_dir=str(tmp_path / "none")), "not found"),
                       (dict(calib_dir=str(tmp_path)), "only used with --int8"),
                       (dict(workspace_gb=0), "workspace"), (dict(batch=0), "batch")]:
        with pytest.raises(ExportError, match=match):
            EngineOptions((480, 640), **bad).validate()
    with pytest.raises(ExportError, match="shape"):
        EngineOptions((4, 640)).validate()
    assert EngineOptions((8, 8), "int8", calib_dir=str(tmp_path)).onnx_precision == "fp16"
    assert EngineOptions((8, 8), "fp32").onnx_precision == "fp32"


def test_trtexec_equivalents():
    fp16 = trtexec_command("m.onnx", "m.engine", EngineOptions((480, 640), "fp16", workspace_gb=1.5))
    assert fp16[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    assert "--stronglyTyped" in fp16 and "--memPoolSize=workspace:1536M" in fp16
    assert "--shapes=ir:1x1x480x640,vis:1x1x480x640" in fp16
    legacy = trtexec_command("m.onnx", "m.engine", EngineOptions((480, 640), "fp16"), strongly_typed=False)
    assert "--fp16" in legacy and "--precisionConstraints=obey" in legacy
    fp32 = trtexec_command("m.onnx", "m.engine", EngineOptions((480, 640), "fp32"))
    assert not any(a.startswith(("--fp16", "--int8", "--stronglyTyped")) for a in fp32)


def test_pin_fp32_layers_on_a_stand_in_network():
    fake_trt = types.SimpleNamespace(float32="f32", float16="f16")

    class Layer:
        def __init__(self, out_types, name=""):
            self.name = name
            self.outs = [types.SimpleNamespace(dtype=t) for t in out_types]
            self.num_outputs = len(out_types)
            self.precision = None
            self.set_types = {}

        def get_output(self, j):
            return self.outs[j]

        def set_output_type(self, j, t):
            self.set_types[j] = t

    layers = [Layer(["f16"]), Layer(["f32"]), Layer(["f32", "f32"]), Layer(["f16", "f32"])]
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    assert pin_fp32_layers(network, fake_trt) == 2
    assert [l.precision for l in layers] == [None, "f32", "f32", None]
    assert layers[2].set_types == {0: "f32", 1: "f32"}
    # by ONNX node name (TensorRT 8.x names layers after nodes), falling back to types when none match
    named = [Layer(["f32"], "node_conv_1"), Layer(["f32"], "node_matmul_2"), Layer(["f32"], "node_matmul_2_1")]
    network = types.SimpleNamespace(num_layers=3, get_layer=lambda i: named[i])
    assert pin_fp32_layers(network, fake_trt, {"node_matmul_2"}) == 2
    assert [l.precision for l in named] == [None, "f32", "f32"]
    assert pin_fp32_layers(network, fake_trt, {"other"}) == 3


def test_fp32_islands_of_a_half_graph(tmp_path):
    from tdfusion_edge.export.onnx_export import export_fusion_onnx
    from tdfusion_edge.export.tensorrt_build import fp32_node_names
    from tdfusion_edge.models import FusionNetConfig
    import onnx

    net = FusionNet(FusionNetConfig(dim=8, num_blocks=1, heads=4)).eval()
    path = export_fusion_onnx(net, tmp_path / "h.onnx", (32, 32), precision="fp16", opset=18).path
    islands = fp32_node_names(path)
    ops = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    assert {ops[n] for n in islands} >= {"MatMul", "Softmax", "Sqrt"}
    assert not any(ops[n] == "Conv" for n in islands)


def _write_pairs(root: Path, sizes, vis_name: str = "vi") -> None:
    rng = np.random.default_rng(0)
    (root / "ir").mkdir(parents=True)
    (root / vis_name).mkdir()
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(root / "ir" / f"p{i}.png"), rng.integers(0, 256, (h, w), dtype=np.uint8))
        cv2.imwrite(str(root / vis_name / f"p{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_calibration_batches_float_stream(tmp_path):
    from tdfusion_edge.imaging import luma_and_chroma, read_image

    _write_pairs(tmp_path, [(40, 50), (30, 70), (64, 64), (20, 20), (50, 40)], vis_name="Visible")
    batches = CalibrationBatches(tmp_path, (32, 48), batch=2)
    assert len(batches) == 2                                        # the fifth pair is an incomplete batch
    items = list(batches)
    assert len(items) == 2 and set(items[0]) == {"ir", "vis"}
    assert items[0]["ir"].shape == (2, 1, 32, 48) and items[0]["ir"].dtype == np.float32
    assert 0.0 <= items[0]["vis"].min() and items[0]["vis"].max() <= 1.0
    vis = cv2.resize(read_image(tmp_path / "Visible" / "p0.png"), (48, 32), interpolation=cv2.INTER_AREA)
    assert np.allclose(items[0]["vis"][0, 0], luma_and_chroma(vis)[0], atol=1e-6)
    assert len(CalibrationBatches(tmp_path, (32, 48), batch=1, max_batches=3)) == 3


def test_calibration_batches_uint8_stream_and_errors(tmp_path):
    _write_pairs(tmp_path / "pairs", [(40, 50), (30, 70)])
    opts = GraphOptions(io="uint8", ir_channels=1, vis_channels=3)
    item = next(iter(CalibrationBatches(tmp_path / "pairs", (24, 32), batch=2, options=opts)))
    assert item["ir"].shape == (2, 24, 32, 1) and item["vis"].shape == (2, 24, 32, 3)
    assert item["ir"].dtype == np.uint8
    with pytest.raises(ExportError, match="at least 3"):
        CalibrationBatches(tmp_path / "pairs", (24, 32), batch=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="ir/ and a vi/"):
        find_pair_folders(tmp_path / "empty")
    with pytest.raises(ExportError, match="not found"):
        find_pair_folders(tmp_path / "missing")


def test_calibration_on_roadscene(roadscene):
    batches = CalibrationBatches(roadscene, (96, 128), batch=4, max_batches=2)
    items = list(batches)
    assert len(items) == 2 and items[1]["vis"].shape == (4, 1, 96, 128)
    assert 0.05 < float(items[0]["ir"].mean()) < 0.95


def test_quality_gate():
    ref = np.linspace(0, 1, 1000, dtype=np.float32).reshape(20, 50)
    assert psnr(ref, ref) == float("inf")
    assert abs(psnr(ref, ref + 0.01) - 40.0) < 1e-3
    good = measure_quality([ref, ref], [ref + 0.005, ref], min_psnr_db=35)
    assert good.passed and good.pairs == 2 and "kept" in good.describe()
    bad = measure_quality([ref, ref], [ref + 0.05, ref], min_psnr_db=35)
    assert not bad.passed and abs(bad.psnr_db - 26.02) < 0.01 and "rejected" in bad.describe()
    with pytest.raises(ValueError):
        measure_quality([], [])


@no_trt
def test_every_tensorrt_entry_point_fails_with_one_line(tmp_path):
    from tdfusion_edge.export.backends import TensorRTBackend
    from tdfusion_edge.export.calibration import make_entropy_calibrator
    from tdfusion_edge.export.tensorrt_build import build_engine, build_engine_cached
    from tdfusion_edge.export.tensorrt_runtime import TensorRTEngine
    from tdfusion_edge.export.trt_import import require_tensorrt

    net = FusionNet().eval()
    _write_pairs(tmp_path / "pairs", [(40, 50), (30, 70)])
    calls = [require_tensorrt,
             lambda: build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", EngineOptions((64, 64))),
             lambda: build_engine_cached(net, EngineOptions((64, 64)), tmp_path),
             lambda: TensorRTEngine(tmp_path / "m.engine"),
             lambda: make_entropy_calibrator(CalibrationBatches(tmp_path / "pairs", (32, 32)), tmp_path / "c"),
             lambda: TensorRTBackend(net, "cpu")]
    for call in calls:
        with pytest.raises(TensorRTUnavailable) as info:
            call()
        message = str(info.value)
        assert "TensorRT" in message and "\n" not in message
    # argument checks come first, so a wrong option is reported even without TensorRT
    with pytest.raises(ExportError, match="--calib"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", EngineOptions((64, 64), "int8"))


def test_model_hash_same_for_released_and_our_format(released_weights, tmp_path):
    from tdfusion_edge.checkpoints import load_fusion_net

    released = load_fusion_net(released_weights)
    ours = load_fusion_net(save_checkpoint(released, tmp_path / "ours.pt"))
    assert model_hash(released) == model_hash(ours)
