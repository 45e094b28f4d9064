"""Semantic-segmentation scores: confusion matrix, mIoU and mAcc (background counted as a class)."""
from __future__ import annotations

import numpy as np


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """``num_classes``² int64 counts, rows = ground-truth class, columns = predicted class.

    Pixels whose target is ``ignore_index`` are skipped; any other label outside
    [0, num_classes) raises ValueError. Matrices of several images simply add up.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    keep = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    t = target[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    for what, labels in (("target", t), ("prediction", p)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{what} has labels outside [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou_macc(confusion) -> tuple[float, float, np.ndarray]:
    """(mIoU, mAcc, per-class IoU) as fractions in [0, 1].

    IoU_c = TP/(TP+FP+FN), Acc_c = TP/(TP+FN). A class absent from both ground truth and
    prediction has IoU NaN; one absent from the ground truth has Acc NaN; the means skip NaNs
    (the mmsegmentation convention). Means are NaN if no class qualifies.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    union = gt + cm.sum(axis=0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    miou = float(np.nanmean(iou)) if np.any(union > 0) else float("nan")
    macc = float(np.nanmean(acc)) if np.any(gt > 0) else float("nan")
    return miou, macc, iou
