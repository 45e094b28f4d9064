"""Downstream task networks behind one interface (``TaskNet``): SegFormer-B0 and YOLOv8.

``build_task("seg" | "det", num_classes, weights)`` builds one; ``to_task_input`` turns a fused
luminance into the network's three-channel input. Heavy libraries (transformers, ultralytics) are
imported only when a network of that kind is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tdfusion_edge.errors import TDFusionError

from .base import TaskNet, to_task_input

__all__ = ["TaskNet", "to_task_input", "build_task", "SegFormerTask", "YoloTask"]


def build_task(task: str, num_classes: int, weights: str | Path | None = None,
               names: Sequence[str] | None = None, **kwargs) -> TaskNet:
    """A task network: ``seg`` → SegFormerTask (B0 from scratch, or a local pretrained folder),
    ``det`` → YoloTask (``weights`` a model yaml, default ``yolov8n.yaml``, or a .pt)."""
    if num_classes < 1:
        raise TDFusionError(f"num_classes must be positive, got {num_classes}")
    if task == "seg":
        from .segformer import SegFormerTask

        return SegFormerTask(num_classes, weights, names=names, **kwargs)
    if task == "det":
        from .yolo import YoloTask

        return YoloTask(num_classes, weights or "yolov8n.yaml", names=names, **kwargs)
    raise TDFusionError(f"unknown task {task!r}; use 'seg' or 'det'")


def __getattr__(name: str):
    # lazy access to the concrete classes without importing transformers/ultralytics up front
    if name == "SegFormerTask":
        from .segformer import SegFormerTask

        return SegFormerTask
    if name == "YoloTask":
        from .yolo import YoloTask

        return YoloTask
    raise AttributeError(name)
