"""Choose between the Triton kernels and the pure-PyTorch references.

``auto`` (default) runs Triton on CUDA tensors and the reference elsewhere. The environment
variable ``TDFUSION_KERNELS`` (``auto``, ``triton`` or ``reference``) or a per-call ``backend``
argument overrides it; forcing ``triton`` on CPU tensors needs ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "TDFUSION_KERNELS"


def triton_available() -> bool:
    """True when the ``triton`` package can be imported here."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for by argument, else by ``TDFUSION_KERNELS``, else ``auto``."""
    choice = (backend or os.environ.get(ENV_VAR) or "auto").lower()
    if choice not in BACKENDS:
        raise ValueError(f"unknown kernel backend {choice!r}; expected one of {', '.join(BACKENDS)}")
    return choice


def use_triton(*tensors: torch.Tensor, backend: str | None = None) -> bool:
    """Decide whether an op on ``tensors`` runs its Triton kernel."""
    choice = requested_backend(backend)
    if choice == "reference":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if choice == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("kernel backend 'triton' was forced but the triton package is not installed")
    if not on_cuda and not interpreter_enabled():
        raise RuntimeError("kernel backend 'triton' on CPU tensors needs TRITON_INTERPRET=1")
    return True
