"""Export and fast inference: ONNX export + checks, TensorRT engines, and the ``FusionBackend`` interface.

Heavy modules (onnx, onnxruntime, tensorrt) load on first use; ``from tdfusion_edge.export import
create_backend`` is cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "FusionBackend": "backends", "create_backend": "backends", "available_backends": "backends",
    "BACKEND_KINDS": "backends",
    "DeployFusionNet": "deploy_net",
    "GraphOptions": "graph_parts",
    "export_fusion_onnx": "onnx_export", "ExportResult": "onnx_export",
    "check_onnx": "onnx_check", "onnx_parity": "onnx_check",
    "EngineOptions": "tensorrt_build", "build_engine": "tensorrt_build", "build_engine_cached": "tensorrt_build",
    "CacheKey": "engine_cache", "model_hash": "engine_cache", "cache_root": "engine_cache",
    "ExportError": "errors", "BackendUnavailable": "errors", "TensorRTUnavailable": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
