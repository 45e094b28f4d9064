"""The real-time app: paired IR/visible sources → pairing → registration → fusion → YOLOv8 → sinks.

``run_live(LiveConfig(...))`` runs it from Python (``tdfusion-edge live`` and ``demo`` call it);
each stage is also usable alone: ``sources``/``reader`` (capture threads), ``pairing``,
``registration``, ``preprocess`` (+ ``cuda_kernels``), ``detection``, ``overlay``, ``sinks``, ``stats``.
"""
from __future__ import annotations

import importlib

__all__ = ["LiveConfig", "LiveStats", "run_live"]
_HOME = {"LiveConfig": "pipeline", "run_live": "pipeline", "LiveStats": "stats"}


def __getattr__(name: str):
    # Imported on first use: light users of one stage (calibrate → registration) then start without
    # loading PyTorch and the fusion backends that the pipeline needs.
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
