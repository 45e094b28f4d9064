"""FusionBackend implementations on the CPU: torch and onnxruntime equal FusionNet, ``auto`` picks
onnxruntime, the ONNX is exported once and reused, and unusable combinations fail in one line."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.export.backends import (FusionBackend, OnnxRuntimeBackend, available_backends, create_backend)
from tdfusion_edge.export.errors import BackendUnavailable
from tdfusion_edge.export.trt_import import tensorrt_available
from tdfusion_edge.models import FusionNet


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = FusionNet()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("backend-cache")


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    return rng.random((2, 40, 56), dtype=np.float32), rng.random((2, 40, 56), dtype=np.float32)


def reference(net, ir, vis):
    with torch.no_grad():
        return net(torch.from_numpy(ir)[:, None], torch.from_numpy(vis)[:, None])[:, 0].numpy()


@pytest.fixture(scope="module")
def ort_backend(net, cache):
    return create_backend("onnxruntime", net=net, cache_dir=cache, threads=2)


def test_available_backends_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectations")
    assert available_backends() == ["onnxruntime", "torch"]


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
def test_backend_matches_fusion_net(kind, net, cache, pair, ort_backend):
    backend = ort_backend if kind == "onnxruntime" else create_backend("torch", net=net, device="cpu")
    assert isinstance(backend, FusionBackend) and backend.name == kind
    ir, vis = pair
    ref = reference(net, ir, vis)
    batch = backend.fuse(ir, vis)
    single = backend.fuse(ir[1], vis[1])
    assert batch.shape == ir.shape and batch.dtype == np.float32
    assert single.shape == ir.shape[1:]
    assert np.abs(batch - ref).max() <= 1e-4
    assert np.abs(single - ref[1]).max() <= 1e-4


def test_onnx_exported_once_and_reused(net, cache, ort_backend, caplog):
    path = ort_backend.onnx_path
    stamp = path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="tdfusion_edge.export.backends"):
        again = OnnxRuntimeBackend(net, "cpu", cache_dir=cache, threads=1)
    assert again.onnx_path == path and path.stat().st_mtime_ns == stamp
    assert "reusing" in caplog.text
    assert len(list(path.parent.glob("*.onnx"))) == 1


def test_auto_picks_onnxruntime_on_cpu(net, cache, ort_backend):
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectation")
    backend = create_backend("auto", net=net, cache_dir=cache)
    assert backend.name == "onnxruntime" and backend.onnx_path == ort_backend.onnx_path
    backend.close()


def test_fuse_rejects_bad_shapes(ort_backend):
    with pytest.raises(TDFusionError, match="same shape"):
        ort_backend.fuse(np.zeros((8, 8), np.float32), np.zeros((8, 9), np.float32))
    with pytest.raises(TDFusionError, match="H×W or B×H×W"):
        ort_backend.fuse(np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 1, 8, 8), np.float32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only expectations")
def test_unusable_combinations_fail_in_one_line(net, cache, caplog):
    cases = [(dict(kind="torch", half=True), "CUDA"), (dict(kind="onnxruntime", half=True), "CUDA provider"),
             (dict(kind="torch", device="cuda"), "no CUDA device"), (dict(kind="tflite"), "unknown backend")]
    if not tensorrt_available():
        cases.append((dict(kind="tensorrt"), "TensorRT is not installed"))
    for kwargs, match in cases:
        with pytest.raises(TDFusionError, match=match) as info:
            create_backend(net=net, cache_dir=cache, **kwargs)
        assert "\n" not in str(info.value)
    with caplog.at_level(logging.WARNING):
        backend = create_backend("auto", net=net, cache_dir=cache, half=True)
    assert backend.precision == "fp32" and "--half ignored" in caplog.text
    assert isinstance(BackendUnavailable("x"), TDFusionError)


def test_weights_argument(net, tmp_path, monkeypatch):
    from tdfusion_edge import checkpoints
    from tdfusion_edge.checkpoints import save_checkpoint

    path = save_checkpoint(net, tmp_path / "w.pt")
    backend = create_backend("torch", weights=str(path), device="cpu")
    x = np.random.default_rng(1).random((24, 32), dtype=np.float32)
    assert np.abs(backend.fuse(x, x) - reference(net, x[None], x[None])[0]).max() <= 1e-5
    monkeypatch.setattr(checkpoints, "default_weights_path", lambda: tmp_path / "missing.pt")
    with pytest.raises(TDFusionError, match="default weights"):
        create_backend("torch")
