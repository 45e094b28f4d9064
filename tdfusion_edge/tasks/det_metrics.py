"""Detection mAP following ultralytics' DetectionValidator: its greedy IoU matching at 0.50:0.05:0.95
(``BaseValidator.match_predictions``), ``box_iou`` and ``ap_per_class`` (101-point interpolated AP
per class present in the ground truth, averaged over those classes)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)


def targets_per_image(targets: Any, num_images: int) -> list[torch.Tensor]:
    """Per-image N×5 [class, x1, y1, x2, y2] pixel boxes from a list of them or a ``det_targets`` dict."""
    if isinstance(targets, dict):
        if "imgsz" not in targets:
            raise ValueError("det_targets needs 'imgsz' (h, w) to turn normalised boxes into pixels")
        h, w = (float(v) for v in targets["imgsz"])
        xywh = targets["bboxes"].float().cpu()
        xyxy = torch.stack((xywh[:, 0] - xywh[:, 2] / 2, xywh[:, 1] - xywh[:, 3] / 2,
                            xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2), 1) * torch.tensor([w, h, w, h])
        rows = torch.cat((targets["cls"].float().cpu().view(-1, 1), xyxy), 1)
        idx = targets["batch_idx"].cpu().long()
        return [rows[idx == i] for i in range(num_images)]
    out = [torch.as_tensor(t).float().cpu().reshape(-1, 5) for t in targets]
    if len(out) != num_images:
        raise ValueError(f"{num_images} prediction sets for {len(out)} target sets")
    return out


def detection_map(predictions: Sequence[torch.Tensor], targets: Any, num_classes: int) -> dict:
    """mAP50, mAP75 and mAP50-95 of per-image N×6 [x1, y1, x2, y2, conf, cls] predictions."""
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    gts = targets_per_image(targets, len(predictions))
    matcher = SimpleNamespace(iouv=IOU_THRESHOLDS)
    tp, conf, pred_cls, target_cls = [], [], [], []
    for pred, gt in zip(predictions, gts):
        pred = torch.as_tensor(pred).float().cpu().reshape(-1, 6)
        order = pred[:, 4].argsort(descending=True)  # the matcher expects descending confidence
        pred = pred[order]
        correct = np.zeros((len(pred), len(IOU_THRESHOLDS)), bool)
        if len(gt) and len(pred):
            iou = box_iou(gt[:, 1:], pred[:, :4])
            correct = BaseValidator.match_predictions(matcher, pred[:, 5], gt[:, 0], iou).numpy()
        tp.append(correct)
        conf.append(pred[:, 4].numpy())
        pred_cls.append(pred[:, 5].numpy())
        target_cls.append(gt[:, 0].numpy())
    tcls = np.concatenate(target_cls) if target_cls else np.zeros(0)
    if tcls.size == 0:
        return {"mAP50": 0.0, "mAP75": 0.0, "mAP50-95": 0.0, "precision": 0.0, "recall": 0.0, "num_targets": 0}
    res = ap_per_class(np.concatenate(tp, 0), np.concatenate(conf), np.concatenate(pred_cls), tcls,
                       names={i: str(i) for i in range(num_classes)})
    p, r, ap = res[2], res[3], res[5]  # per class present in the targets; ap: (classes, 10 thresholds)
    return {"mAP50": float(ap[:, 0].mean()), "mAP75": float(ap[:, 5].mean()), "mAP50-95": float(ap.mean()),
            "precision": float(p.mean()), "recall": float(r.mean()), "num_targets": int(tcls.size)}
