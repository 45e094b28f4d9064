"""The real-time app: paired IR/visible sources → pairing → registration → fusion → YOLOv8 → sinks.

``run_live(LiveConfig(...))`` runs it from Python (``tdfusion-edge live`` and ``demo`` call it);
each stage is also usable alone: ``sources``/``reader`` (capture threads), ``pairing``,
``registration``, ``preprocess`` (+ ``cuda_kernels``), ``detection``, ``overlay``, ``sinks``, ``stats``.
"""
from .pipeline import LiveConfig, run_live
from .stats import LiveStats

__all__ = ["LiveConfig", "LiveStats", "run_live"]
