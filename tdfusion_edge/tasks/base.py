"""TaskNet: the interface every downstream task network offers to the trainer, and ``to_task_input``.

What the task network sees: the released code feeds the fused luminance itself (B×1×H×W in [0, 1],
no normalisation) to one-input-channel SegFormer / YOLOv8 variants. Here the standard three-channel
networks are used (so pretrained weights load unchanged); ``to_task_input`` repeats the gray image
over three channels, which is the same function class as a one-channel first layer whose kernel is
the sum of the three. With the visible chroma given, the fused Y is recoloured (OpenCV YCrCb → RGB)
instead. Channel order is RGB.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

# OpenCV's YCrCb → RGB for data in [0, 1] (delta 0.5): R = Y + 1.403 Cr', G = Y − 0.714 Cr' − 0.344 Cb',
# B = Y + 1.773 Cb', with Cr' = Cr − 0.5 and Cb' = Cb − 0.5.
_CR_TO_RGB = (1.403, -0.714, 0.0)
_CB_TO_RGB = (0.0, -0.344, 1.773)


def to_task_input(fused_y: torch.Tensor, vis_crcb: torch.Tensor | None = None) -> torch.Tensor:
    """B×3×H×W RGB in [0, 1] from a fused B×1×H×W luminance (and optionally the visible B×2×H×W CrCb)."""
    if fused_y.dim() != 4 or fused_y.shape[1] != 1:
        raise ValueError(f"fused_y must be B×1×H×W, got {tuple(fused_y.shape)}")
    if vis_crcb is None:
        return fused_y.expand(-1, 3, -1, -1)
    if vis_crcb.shape[0] != fused_y.shape[0] or vis_crcb.shape[1] != 2 or vis_crcb.shape[2:] != fused_y.shape[2:]:
        raise ValueError(f"vis_crcb must be B×2×H×W matching fused_y, got {tuple(vis_crcb.shape)}")
    c = vis_crcb.to(fused_y.dtype) - 0.5
    cr, cb = c[:, :1], c[:, 1:]
    rgb = [fused_y + a * cr + b * cb for a, b in zip(_CR_TO_RGB, _CB_TO_RGB)]
    return torch.cat(rgb, 1).clamp(0, 1)


class TaskNet(nn.Module):
    """A task network whose ``forward`` returns the task loss, so the trainer can run it through
    ``torch.func.functional_call(task_net, params_and_buffers, (images, targets))`` for θ_T'.

    - ``forward(images, targets) -> loss``: images B×3×H×W in [0, 1] (``to_task_input``), targets
      as in the batch dict (``batch["mask"]`` for seg, ``batch["det_targets"]`` for det; the whole
      batch dict is accepted too). Scalar tensor, differentiable in parameters and images.
    - ``predict(images)``: seg → B×H×W int64 labels; det → list of N×6 [x1, y1, x2, y2, conf, cls].
    - ``evaluate(predictions, targets) -> dict``: seg → mIoU, mAcc; det → mAP50, mAP75, mAP50-95.

    BatchNorm: a forward in train mode updates running statistics in place on whatever buffers it is
    run with (the module's own, or those passed to ``functional_call``); they are not in the autograd
    graph. Pass cloned buffers to keep T untouched during a meta step.
    """

    task: str = ""
    target_key: str = ""
    to_task_input = staticmethod(to_task_input)

    def __init__(self, num_classes: int, names: tuple[str, ...] | None = None):
        super().__init__()
        self.num_classes = int(num_classes)
        self.names = tuple(names) if names else tuple(str(i) for i in range(self.num_classes))

    def targets(self, batch_or_targets: Any) -> Any:
        """The targets this task reads, from a batch dict or the targets themselves."""
        if isinstance(batch_or_targets, Mapping) and self.target_key in batch_or_targets:
            return batch_or_targets[self.target_key]
        return batch_or_targets

    def forward(self, images: torch.Tensor, targets: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, predictions: Any, targets: Any) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


def frozen_params_to_buffers(module: nn.Module) -> int:
    """Re-register parameters with ``requires_grad=False`` as buffers of the same name; returns how many.

    Then ``named_parameters()`` lists exactly what is trained (a meta step can differentiate all of it)
    while ``state_dict()`` keys stay the same.
    """
    n = 0
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and not p.requires_grad:
                del m._parameters[name]
                m.register_buffer(name, p.detach())
                n += 1
    return n


class eval_mode:
    """Context manager: a module in eval mode inside, its previous mode restored after."""

    def __init__(self, module: nn.Module):
        self.module, self.was_training = module, module.training

    def __enter__(self) -> nn.Module:
        self.module.eval()
        return self.module

    def __exit__(self, *exc) -> None:
        self.module.train(self.was_training)
