"""Importing TensorRT: one place that says clearly what is missing."""
from __future__ import annotations

import importlib
import importlib.util

from .errors import TensorRTUnavailable

MISSING = ("TensorRT is not installed here (x86: pip install tensorrt with a CUDA GPU; Jetson: it ships "
           "with JetPack, see docs/export.md); use --format onnx / --backend onnxruntime instead")
MIN_VERSION = (8, 5)  # the named-tensor API (set_tensor_address, execute_async_v3) used here


def tensorrt_available() -> bool:
    """True when the ``tensorrt`` package can be imported (a GPU is a separate question)."""
    return importlib.util.find_spec("tensorrt") is not None


def require_tensorrt():
    """The ``tensorrt`` module, or TensorRTUnavailable with one line saying what to do."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        raise TensorRTUnavailable(MISSING) from None
    version = tuple(int(p) for p in trt.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_VERSION:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old; this code needs ≥ "
                                  f"{'.'.join(map(str, MIN_VERSION))} (JetPack ≥ 5.1)")
    return trt
