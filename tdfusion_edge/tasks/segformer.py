"""SegFormerTask: SegFormer-B0 (``transformers``) with a cross-entropy loss, ignore index 255,
optionally weighted per class (``class_weights``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tdfusion_edge.errors import TDFusionError

from .base import TaskNet, eval_mode
from .class_weights import check_class_weights, enet_class_weights

# MiT-B0 encoder and its all-MLP decoder (SegFormer paper, table 6).
B0 = dict(num_channels=3, num_encoder_blocks=4, depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1],
          hidden_sizes=[32, 64, 160, 256], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
          num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=256)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_segformer(num_classes: int, weights: str | Path | None = None, ignore_index: int = 255):
    """SegformerForSemanticSegmentation: B0 from a config (offline) or ``from_pretrained(local dir)``.

    Eager attention is forced: the fused SDPA kernels on CUDA have no double backward, which the
    meta step may need.
    """
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    if weights is None:
        config = SegformerConfig(num_labels=num_classes, semantic_loss_ignore_index=ignore_index, **B0)
        config._attn_implementation = "eager"
        return SegformerForSemanticSegmentation(config)
    path = Path(weights).expanduser()
    if not path.is_dir():
        raise TDFusionError(f"SegFormer weights {weights!s} not found: give a local folder with config.json and "
                            f"model weights (saved by save_pretrained), or none to build B0 from scratch")
    try:
        return SegformerForSemanticSegmentation.from_pretrained(
            str(path), num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True,
            attn_implementation="eager", semantic_loss_ignore_index=ignore_index)
    except (OSError, ValueError) as exc:
        raise TDFusionError(f"cannot load SegFormer weights from {path}: {str(exc).splitlines()[0]}") from None


class SegFormerTask(TaskNet):
    """Semantic segmentation: loss = CE(logits upsampled to the label size, mask), mean over non-ignored pixels.

    Logits (stride 4) are upsampled bilinearly with ``align_corners=False`` (transformers' convention;
    the released code uses ``True``). Inputs are normalised with ImageNet statistics only when
    ``normalize`` is on (default: on for pretrained weights, off when built from scratch, as released).
    ``class_weights``: None (plain cross-entropy, as released), ``"enet"`` (per-batch 1/ln(1.02 + class
    share)) or one weight per class.
    """

    task = "seg"
    target_key = "mask"

    def __init__(self, num_classes: int, weights: str | Path | None = None, names: Sequence[str] | None = None,
                 ignore_index: int = 255, normalize: bool | None = None,
                 class_weights: str | Sequence[float] | None = None):
        super().__init__(num_classes, tuple(names) if names else None)
        self.ignore_index = ignore_index
        self.class_weights = check_class_weights(class_weights, num_classes)
        self.model = build_segformer(num_classes, weights, ignore_index)
        self.normalize = (weights is not None) if normalize is None else bool(normalize)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """B×C×H/4×W/4 class scores."""
        x = (images - self.mean) / self.std if self.normalize else images
        return self.model(pixel_values=x).logits

    def forward(self, images: torch.Tensor, targets: Any) -> torch.Tensor:
        mask = self.targets(targets).to(images.device, torch.long)
        logits = self.logits(images)
        logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, mask, weight=self.loss_weights(mask), ignore_index=self.ignore_index)

    def loss_weights(self, mask: torch.Tensor) -> torch.Tensor | None:
        """The per-class weights of the loss on ``mask`` (None: unweighted)."""
        if self.class_weights is None:
            return None
        if self.class_weights == "enet":
            return enet_class_weights(mask, self.num_classes, self.ignore_index)
        return torch.tensor(self.class_weights, dtype=torch.float32, device=mask.device)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """B×H×W int64 labels at the input size."""
        with eval_mode(self):
            logits = self.logits(images)
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
            return logits.argmax(1)

    def evaluate(self, predictions: Any, targets: Any) -> dict:
        """mIoU, mAcc (fractions), per-class IoU and the confusion matrix over all given images.

        ``predictions`` and ``targets``: B×H×W tensors/arrays, or lists of them (one per batch).
        """
        from tdfusion_edge.metrics.segmentation import confusion_matrix, miou_macc

        preds = predictions if isinstance(predictions, (list, tuple)) else [predictions]
        tgts = targets if isinstance(targets, (list, tuple)) else [targets]
        if len(preds) != len(tgts):
            raise ValueError(f"{len(preds)} prediction batches for {len(tgts)} target batches")
        cm = np.zeros((self.num_classes, self.num_classes), np.int64)
        for p, t in zip(preds, tgts):
            t = self.targets(t)
            p = p.cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
            t = t.cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
            cm += confusion_matrix(p, t, self.num_classes, self.ignore_index)
        miou, macc, iou = miou_macc(cm)
        return {"mIoU": miou, "mAcc": macc, "per_class_iou": iou.tolist(), "confusion": cm}
