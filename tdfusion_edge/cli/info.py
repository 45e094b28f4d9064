"""``tdfusion-edge info``: versions and which backends and kernels are usable here."""
from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
import shutil

from .common import add_command

_PACKAGES = ("torch", "torchvision", "triton", "numpy", "opencv-python-headless", "onnx", "onnxruntime",
             "ultralytics", "transformers", "tensorrt", "pycuda", "cupy")


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "info", "print versions and the backends/kernels usable here", "tdfusion-edge info")
    p.set_defaults(func=run)


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def collect_info() -> dict[str, object]:
    """Versions, devices and usable backends as a dict (also used by tests)."""
    import torch

    from tdfusion_edge import __version__
    from tdfusion_edge.kernels import requested_backend, triton_available

    info: dict[str, object] = {"tdfusion-edge": __version__, "python": platform.python_version(),
                               "platform": platform.platform()}
    info.update({name: _version(name) for name in _PACKAGES})
    info["cuda available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["cuda device"] = torch.cuda.get_device_name(0)
    info["cpu threads"] = torch.get_num_threads()
    info["kernel backend (TDFUSION_KERNELS)"] = requested_backend()
    info["triton kernels"] = ("usable on CUDA" if triton_available() and torch.cuda.is_available()
                              else "installed; CPU runs the references (TRITON_INTERPRET=1 to interpret)"
                              if triton_available() else "not available")
    info["nvcc"] = shutil.which("nvcc") or "not found"
    info["live pre-processing"] = _preprocessing()
    info["built-in models"] = _builtin_models()
    try:
        backends = importlib.import_module("tdfusion_edge.export.backends")
        info["fusion backends usable"] = ", ".join(backends.available_backends())
    except (ImportError, AttributeError):
        info["fusion backends usable"] = "torch"
    return info


def _builtin_models() -> str:
    """The names --weights / --det / load_model take, each with its file size (or that it is missing)."""
    from pathlib import Path

    from tdfusion_edge.checkpoints import (BUILTIN_DETECTORS, BUILTIN_LOSS_GENERATORS, BUILTIN_WEIGHTS,
                                           resolve_detector_name, resolve_weights)

    def size(path: Path) -> str:
        return f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "missing"

    parts = [f"--weights {n} ({size(resolve_weights(n))})" for n in BUILTIN_WEIGHTS]
    parts += [f"G {n} ({size(resolve_weights(n, 'LossGenerator'))})" for n in BUILTIN_LOSS_GENERATORS]
    parts += [f"--det {n} ({size(Path(resolve_detector_name(n)))})" for n in BUILTIN_DETECTORS]
    return "; ".join(parts)


def _preprocessing() -> str:
    """Where the live app's pre-processing runs here, and why not on the GPU (said here, once, rather
    than logged by every run)."""
    try:
        from tdfusion_edge.apps.cuda_kernels import CudaPreprocessor, CudaUnavailable
    except ImportError as exc:
        return f"NumPy/OpenCV on the CPU (CUDA kernels not importable: {exc})"
    try:
        pre = CudaPreprocessor("auto")
    except CudaUnavailable as exc:
        return f"NumPy/OpenCV on the CPU ({exc})"
    except Exception as exc:  # a broken driver or toolkit must not stop `info`
        return f"NumPy/OpenCV on the CPU (CUDA kernels failed: {type(exc).__name__}: {str(exc)[:120]})"
    name = pre.name
    pre.close()
    return f"CUDA kernels, {name}"


def run(args) -> int:
    info = collect_info()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0
