"""Per-epoch evaluation: task metric of T on F's fused images, fusion metrics, and G's weights on fixed samples."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from tdfusion_edge.metrics import compute_metrics

from .data_stream import to_device

# The metrics of the paper's tables (Table 3 reports these six).
FUSION_METRICS = ("EN", "SF", "SCD", "VIF", "Qabf", "SSIM")


@dataclass
class FixedSamples:
    """The samples whose weight maps are drawn every epoch (task view, on the device).

    ``ir_only``: per sample, the pixels of objects only the infrared image shows, where the
    dataset knows them (the synthetic scenes do), else None.
    """

    ir: torch.Tensor
    vis: torch.Tensor
    names: list[str]
    ir_only: list[np.ndarray | None]


def fixed_samples(dataset: Dataset, count: int, device: torch.device) -> FixedSamples | None:
    """The first ``count`` samples of ``dataset`` (with modality masks when it can give them)."""
    count = min(count, len(dataset))
    if count == 0:
        return None
    if hasattr(dataset, "with_modal_masks"):
        dataset.with_modal_masks = True
    items = [dataset[i] for i in range(count)]
    return FixedSamples(torch.stack([s["ir"] for s in items]).to(device),
                        torch.stack([s["vis"] for s in items]).to(device),
                        [s["name"] for s in items],
                        [s["ir_only"].numpy() if "ir_only" in s else None for s in items])


def masked_mean(w: torch.Tensor, masks: list[np.ndarray | None]) -> float:
    """Mean of B×1×H×W ``w`` over the True pixels of the per-sample masks (NaN when there are none)."""
    total, count = 0.0, 0
    for i, m in enumerate(masks):
        if m is not None and m.any():
            sel = torch.from_numpy(m).to(w.device)
            total += float(w[i, 0][sel].sum())
            count += int(sel.sum())
    return total / count if count else float("nan")


@torch.no_grad()
def weights_and_fused(fuse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], loss_gen: nn.Module | None,
                      samples: FixedSamples) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(w_ir of G or None, fused image) on the fixed samples, networks in eval mode."""
    w = loss_gen(samples.ir, samples.vis)[:, :1] if loss_gen is not None else None
    return w, fuse(samples.ir, samples.vis)


@torch.no_grad()
def evaluate(fuse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], task_net: nn.Module,
             to_task_input: Callable[..., torch.Tensor], batches: Iterable[dict], device: torch.device,
             max_samples: int = 0, metric_samples: int = 8, convention: str = "tdfusion",
             progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict[str, float]:
    """Task metric (mIoU/mAcc or mAP) of T on F(ir, vis), and mean fusion metrics on the first samples.

    ``max_samples`` 0 means the whole split. The networks' train/eval modes are restored by the caller.
    """
    preds: list[Any] = []
    targets: list[Any] = []
    fusion_rows: list[dict[str, float]] = []
    seen = 0
    for batch in progress(batches):
        if max_samples and seen >= max_samples:
            break
        batch = to_device(batch, device)
        take = len(batch["name"]) if not max_samples else min(len(batch["name"]), max_samples - seen)
        fused = fuse(batch["ir"][:take], batch["vis"][:take])
        images = to_task_input(fused, batch["vis_crcb"][:take] if "vis_crcb" in batch else None)
        pred = task_net.predict(images)
        if task_net.task == "det":
            preds += [p.cpu() for p in pred]
            targets += [b.cpu() for b in batch["boxes"][:take]]
        else:
            preds.append(pred.cpu())
            targets.append(batch["mask"][:take].cpu())
        for i in range(take):
            if len(fusion_rows) >= metric_samples:
                break
            f, a, b = (t[i, 0].float().cpu().numpy() * 255.0 for t in (fused, batch["ir"], batch["vis"]))
            fusion_rows.append(compute_metrics(f, a, b, convention, metrics=FUSION_METRICS))
        seen += take
    out: dict[str, float] = {}
    if preds:
        scores = task_net.evaluate(preds, targets)
        out.update({k: float(v) for k, v in scores.items() if isinstance(v, (int, float, np.floating))})
    for name in FUSION_METRICS:
        values = [row[name] for row in fusion_rows if np.isfinite(row[name])]
        if values:
            out[name] = float(np.mean(values))
    out["samples"] = float(seen)
    return out
