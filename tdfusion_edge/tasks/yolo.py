"""YoloTask: YOLOv8 (``ultralytics``) with ultralytics' own detection loss, run without a trainer."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from tdfusion_edge.errors import TDFusionError

from .base import TaskNet, eval_mode, frozen_params_to_buffers
from .det_metrics import detection_map

# ultralytics letterboxes with gray 114; padding to the stride multiple uses the same value.
PAD_VALUE = 114 / 255
LOSS_SCALES = ("released", "ultralytics")


def build_yolo(weights: str | Path, num_classes: int) -> torch.nn.Module:
    """An ultralytics DetectionModel with ``num_classes`` outputs from a yaml or a .pt (weights transferred).

    The file goes through ``tdfusion_edge.validation.detector``: a .pt is read weights-only against the
    YOLOv8 allow-list (or is this project's own detector format), and every model yaml is checked
    before ultralytics builds from it, so no file can run code here.
    """
    from tdfusion_edge.validation.detector import (build_from_yaml, check_detector_spec, load_detector_model,
                                                   read_model_yaml)

    spec = check_detector_spec(weights, deep=False)
    if spec.kind == "yaml":
        return build_from_yaml(read_model_yaml(spec.path), spec.path, nc=num_classes)
    if spec.kind != "torch":
        raise TDFusionError(f"YOLO task weights must be a model yaml (yolov8n.yaml) or a .pt file, got {weights!r}")
    src = load_detector_model(spec)
    model = build_from_yaml(src.yaml, str(weights), nc=num_classes)
    model.load(src, verbose=False)
    return model


def default_hyp(**overrides) -> Any:
    """ultralytics' default training hyperparameters (box 7.5, cls 0.5, dfl 1.5, ...) as its namespace."""
    from ultralytics.cfg import get_cfg

    return get_cfg(overrides=overrides or None)


class YoloTask(TaskNet):
    """Object detection with YOLOv8 and ``v8DetectionLoss``.

    ``forward`` pads the images bottom/right to a multiple of the largest stride (32) with gray 114
    (boxes stay put; their normalisation is rescaled to the padded size) and returns the weighted sum
    box·7.5 + cls·0.5 + dfl·1.5. ultralytics' criterion returns that vector times the batch size (its
    trainer then sums it); ``loss_scale="released"`` (default) returns the sum without the batch
    factor, as the released TDFusion yoloLoss does; ``"ultralytics"`` keeps the factor.
    The last detached (box, cls, dfl) terms are kept in ``last_loss_items`` for logging. The fixed DFL
    projection (a frozen parameter in ultralytics) is a buffer here, so ``named_parameters()`` is
    exactly the trainable set.
    """

    task = "det"
    target_key = "det_targets"

    def __init__(self, num_classes: int, weights: str | Path = "yolov8n.yaml", names: Sequence[str] | None = None,
                 loss_scale: str = "released", hyp: dict | None = None):
        super().__init__(num_classes, tuple(names) if names else None)
        if loss_scale not in LOSS_SCALES:
            raise TDFusionError(f"loss_scale must be one of {LOSS_SCALES}")
        self.loss_scale = loss_scale
        self.model = build_yolo(weights, num_classes)
        frozen_params_to_buffers(self.model)  # the fixed DFL projection: every parameter is then trainable
        self.model.args = default_hyp(**(hyp or {}))  # what v8DetectionLoss reads (box, cls, dfl gains)
        self.model.names = dict(enumerate(self.names))
        self.stride = int(self.model.stride.max())
        self._criterion = None
        self.last_loss_items: torch.Tensor | None = None

    def criterion(self, device: torch.device):
        """ultralytics' v8DetectionLoss for this model, built on first use and again after a device move."""
        from ultralytics.utils.loss import v8DetectionLoss

        if self._criterion is None or self._criterion.device != device:
            self._criterion = v8DetectionLoss(self.model)
        return self._criterion

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """Images padded bottom/right to a multiple of the stride (differentiable)."""
        h, w = images.shape[-2:]
        ph, pw = -h % self.stride, -w % self.stride
        return F.pad(images, (0, pw, 0, ph), value=PAD_VALUE) if ph or pw else images

    def forward(self, images: torch.Tensor, targets: Any) -> torch.Tensor:
        t = self.targets(targets)
        h, w = images.shape[-2:]
        x = self.pad(images)
        hp, wp = x.shape[-2:]
        bboxes = t["bboxes"].to(images.device, images.dtype)
        if (hp, wp) != (h, w):
            bboxes = bboxes * bboxes.new_tensor([w / wp, h / hp, w / wp, h / hp])
        batch = {"batch_idx": t["batch_idx"].to(images.device), "cls": t["cls"].to(images.device),
                 "bboxes": bboxes}
        preds = self.model(x)
        loss, _ = self.criterion(images.device)(preds, batch)
        self.last_loss_items = loss.detach() / images.shape[0]
        total = loss.sum()
        return total / images.shape[0] if self.loss_scale == "released" else total

    @torch.no_grad()
    def predict(self, images: torch.Tensor, conf: float = 0.001, iou: float = 0.7,
                max_det: int = 300) -> list[torch.Tensor]:
        """Per image N×6 [x1, y1, x2, y2, conf, cls] after NMS (validator defaults: conf 0.001, IoU 0.7)."""
        from ultralytics.utils.nms import non_max_suppression

        h, w = images.shape[-2:]
        with eval_mode(self):
            y = self.model(self.pad(images))
        y = y[0] if isinstance(y, (tuple, list)) else y
        out = non_max_suppression(y, conf, iou, multi_label=True, max_det=max_det)
        for det in out:
            det[:, [0, 2]] = det[:, [0, 2]].clamp(0, w)
            det[:, [1, 3]] = det[:, [1, 3]].clamp(0, h)
        return [d[:, :6] for d in out]

    def evaluate(self, predictions: Sequence[torch.Tensor], targets: Any) -> dict:
        """mAP50, mAP75, mAP50-95 (ultralytics' matching and ``ap_per_class``) over all given images.

        ``targets``: per-image N×5 [class, x1, y1, x2, y2] pixel boxes (``batch["boxes"]``), or a
        ``det_targets`` dict (with ``imgsz``), or a list of such dicts matching lists of predictions.
        """
        return detection_map(predictions, self.targets(targets), self.num_classes)
