"""ONNX export: the deploy re-expression equals FusionNet, the exported graphs pass onnx.checker and
onnxruntime reproduces PyTorch (≤ 1e-4), FP16 graphs keep their reductions in FP32, in-graph
pre/post-processing matches the imaging module, fusion → YOLO exports as one graph."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tdfusion_edge.export.deploy_net import DeployFusionNet
from tdfusion_edge.export.errors import ExportError
from tdfusion_edge.export.graph_parts import GraphOptions, bgr_to_luma, compose_bgr, load_detector, stretch_minmax
from tdfusion_edge.export.onnx_check import check_onnx, onnx_io, onnx_parity, ort_session, reduction_input_types
from tdfusion_edge.export.onnx_export import (build_export_module, build_reference_module, example_inputs,
                                              export_fusion_onnx)
from tdfusion_edge.models import FusionNet, FusionNetConfig


def perturbed_net(config: FusionNetConfig | None = None, seed: int = 0) -> FusionNet:
    """A FusionNet whose LayerNorm affine params and temperatures are not at their trivial init."""
    torch.manual_seed(seed)
    net = FusionNet(config)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def net():
    return perturbed_net()


@pytest.fixture(scope="module")
def fp32_dynamic(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "fusion_dyn.onnx"
    return export_fusion_onnx(net, path, imgsz=None, batch=None, opset=18)


@pytest.fixture(scope="module")
def small_net():
    """A smaller network of the same kind: exports trace faster (the released size is covered above)."""
    return perturbed_net(FusionNetConfig(dim=8, num_blocks=1, heads=4), seed=2)


@pytest.mark.parametrize("config", [FusionNetConfig(),
                                    FusionNetConfig(dim=8, num_blocks=1, heads=4, ffn_expansion=2.66)])
def test_deploy_net_equals_fusion_net(config):
    net = perturbed_net(config, seed=1)
    x = torch.rand(2, 2, 37, 53)
    with torch.no_grad():
        diff = (net(x[:, :1], x[:, 1:]) - DeployFusionNet(net)(x[:, :1], x[:, 1:])).abs().max().item()
    assert diff <= 1e-5


def test_deploy_net_rejects_bias():
    with pytest.raises(ValueError, match="bias"):
        DeployFusionNet(FusionNet(FusionNetConfig(bias=True)))


def test_onnx_fp32_dynamic_io_contract_and_parity(net, fp32_dynamic):
    import onnx

    assert fp32_dynamic.opset >= 17
    model = onnx.load(str(fp32_dynamic.path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    io = onnx_io(fp32_dynamic.path)
    assert [(n, t) for n, t, _ in io["inputs"]] == [("ir", "FLOAT"), ("vis", "FLOAT")]
    assert [(n, t) for n, t, _ in io["outputs"]] == [("fused", "FLOAT")]
    dims = io["inputs"][0][2]
    assert dims[1] == 1 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
    reference = build_reference_module(net)
    for shape, batch in (((64, 80), 1), ((37, 53), 2)):
        diffs = onnx_parity(reference, fp32_dynamic.path, example_inputs(GraphOptions(), shape, batch, seed=3))
        assert diffs["fused"] <= 1e-4, (shape, diffs)


def test_onnx_fp16_keeps_reductions_in_fp32(small_net, tmp_path):
    net = small_net
    result = export_fusion_onnx(net, tmp_path / "half.onnx", imgsz=(64, 80), batch=1, precision="fp16", opset=18)
    types = reduction_input_types(result.path)
    assert types, "no reductions found"
    half_matmuls = []
    for node, inputs in types.items():
        if node.startswith(("ReduceSum", "Softmax")):
            assert inputs[0] == "FLOAT", (node, inputs)
        elif "FLOAT16" in inputs:
            half_matmuls.append(node)
    # Only the mixing matmuls (C×C matrix · v, a reduction over ≤ 32 channels) may run in FP16:
    # one per encoder block (both branches together), the fusion module, one per decoder block.
    assert len(half_matmuls) == 2 * net.config.num_blocks + 1
    inputs = example_inputs(result.options, (64, 80))
    diffs = onnx_parity(build_reference_module(net), result.path, inputs)
    assert diffs["fused"] <= 5e-3


def test_onnx_uint8_io_with_yolo_single_graph(small_net, tmp_path):
    net = small_net  # opset 17: also exercises the down-conversion and its Split fix (YOLOv8's C2f)
    options = GraphOptions(io="uint8", stretch="minmax")
    detector = load_detector("yolov8n.yaml")
    result = export_fusion_onnx(net, tmp_path / "det.onnx", imgsz=(64, 96), options=options, detector=detector)
    assert result.outputs == ["fused", "fused_bgr", "detections"]
    io = onnx_io(result.path)
    assert [t for _, t, _ in io["inputs"]] == ["UINT8", "UINT8"]
    assert io["inputs"][1][2] == [1, 64, 96, 3]
    assert [t for _, t, _ in io["outputs"]] == ["UINT8", "UINT8", "FLOAT"]
    diffs = onnx_parity(build_reference_module(net, options, detector), result.path, example_inputs(options, (64, 96)))
    assert diffs["fused"] <= 1 and diffs["fused_bgr"] <= 1       # uint8: at most one rounding step
    assert diffs["detections"] <= 1e-2                            # box coordinates in pixels
    frames = example_inputs(options, (64, 96))
    fused = ort_session(result.path).run(["fused"], {"ir": frames[0].numpy(), "vis": frames[1].numpy()})[0]
    assert fused.min() == 0 and fused.max() == 255                # stretched by its own min/max


def test_graph_preprocessing_matches_imaging():
    from tdfusion_edge.imaging import compose_output, luma_and_chroma

    rng = np.random.default_rng(0)
    vis = rng.integers(0, 256, (1, 20, 30, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, (1, 20, 30, 1), dtype=np.uint8)
    y_ref, chroma = luma_and_chroma(vis[0])
    y_graph = bgr_to_luma(torch.from_numpy(vis))[0, 0].numpy() / 255.0
    assert np.abs(y_graph - y_ref).max() <= 1e-5
    assert np.array_equal(bgr_to_luma(torch.from_numpy(ir))[0, 0].numpy(), ir[0, :, :, 0].astype(np.float32))
    fused = rng.random((20, 30)).astype(np.float32)
    y8 = np.round(fused * 255).astype(np.uint8)
    bgr_graph = compose_bgr(torch.from_numpy(y8)[None, :, :, None], torch.from_numpy(vis))[0].numpy()
    bgr_ref = compose_output(fused, chroma)
    assert np.abs(bgr_graph.astype(int) - bgr_ref.astype(int)).max() <= 1


def test_graph_stretch_matches_released_inference():
    from tdfusion_edge.imaging import stretch_minmax as stretch_np

    y = torch.rand(2, 1, 9, 11) * 0.5 + 0.2
    out = stretch_minmax(y)
    for i in range(2):
        assert np.abs(out[i, 0].numpy() - stretch_np(y[i, 0].numpy())).max() <= 1e-6
    assert torch.equal(stretch_minmax(torch.full((1, 1, 4, 4), 0.3)), torch.zeros(1, 1, 4, 4))


def test_export_argument_errors(net, tmp_path):
    with pytest.raises(ExportError, match="opset"):
        export_fusion_onnx(net, tmp_path / "x.onnx", imgsz=(32, 32), opset=16)
    with pytest.raises(ExportError, match="multiples of 32"):
        export_fusion_onnx(net, tmp_path / "x.onnx", imgsz=(60, 80), detector=torch.nn.Identity())
    with pytest.raises(ExportError, match="fixed --imgsz"):
        export_fusion_onnx(net, tmp_path / "x.onnx", imgsz=None, detector=torch.nn.Identity())
    with pytest.raises(ExportError, match="not found on disk"):
        load_detector(str(tmp_path / "yolov8n.pt"))
    with pytest.raises(ExportError, match="precision"):
        build_export_module(net, "int8")
    with pytest.raises(ExportError):
        GraphOptions(io="rgb")


def test_check_onnx_rejects_broken_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="onnx.checker"):
        check_onnx(bad)
