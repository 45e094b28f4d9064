"""Batching samples and the released "swap" augmentation.

Batch keys: ``crop_ir``, ``crop_vis`` B×1×C×C; ``ir``, ``vis`` B×1×h×w; ``vis_crcb`` B×2×h×w (optional);
``mask`` B×h×w int64 (seg); ``boxes`` list of N×5 pixel boxes and ``det_targets`` (det) — the ultralytics
batch layout {``batch_idx`` (M,), ``cls`` (M,1), ``bboxes`` (M,4) xywh normalised to the task view,
``imgsz`` (h, w)}; ``name`` list, ``index`` (B,) int64, ``orig_size`` B×2 int64, ``skipped`` list of
names replaced at load time, ``swapped`` (B,) bool; ``ir_only``/``vis_only`` B×h×w bool when the
dataset gives them (SyntheticPairs).
"""
from __future__ import annotations

import torch

STACKED = ("crop_ir", "crop_vis", "ir", "vis", "vis_crcb", "mask", "ir_only", "vis_only")


def det_targets(boxes: list[torch.Tensor], height: int, width: int) -> dict[str, torch.Tensor]:
    """Ultralytics' target layout from per-image N×5 pixel boxes of ``height``×``width`` images."""
    rows = [b.reshape(-1, 5).float() for b in boxes]
    idx = torch.cat([torch.full((len(b),), float(i)) for i, b in enumerate(rows)]) if rows else torch.zeros(0)
    allb = torch.cat(rows) if rows else torch.zeros(0, 5)
    x1, y1, x2, y2 = allb[:, 1], allb[:, 2], allb[:, 3], allb[:, 4]
    xywh = torch.stack(((x1 + x2) / (2 * width), (y1 + y2) / (2 * height),
                        (x2 - x1) / width, (y2 - y1) / height), 1)
    return {"batch_idx": idx, "cls": allb[:, :1].clone(), "bboxes": xywh,
            "imgsz": torch.tensor([height, width])}


def collate_fn(samples: list[dict]) -> dict:
    """Stack a list of sample dicts into a batch dict (see the module doc)."""
    first = samples[0]
    batch: dict = {k: torch.stack([s[k] for s in samples]) for k in STACKED if k in first}
    batch["name"] = [s["name"] for s in samples]
    batch["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.int64)
    batch["orig_size"] = torch.tensor([s["orig_size"] for s in samples], dtype=torch.int64)
    batch["skipped"] = [n for s in samples for n in s.get("skipped", ())]
    batch["swapped"] = torch.zeros(len(samples), dtype=torch.bool)
    if "boxes" in first:
        batch["boxes"] = [s["boxes"] for s in samples]
        h, w = first["ir"].shape[-2:]
        batch["det_targets"] = det_targets(batch["boxes"], int(h), int(w))
    return batch


def swap_pairs(batch: dict) -> dict:
    """The released "Switch": each pair is also fed as (vis, ir); batch size doubles, targets repeat.

    The first half is the batch as given, the second half has IR and visible exchanged (``swapped``
    marks it); detection targets of the second half point at images B..2B−1. Works on CPU or device
    tensors. The released code halves the loader batch size to keep 2 images per step (batch 1 + swap).
    """
    b = len(batch["name"])
    out: dict = {}
    for a, c in (("crop_ir", "crop_vis"), ("ir", "vis")):
        if a in batch:
            out[a] = torch.cat((batch[a], batch[c]))
            out[c] = torch.cat((batch[c], batch[a]))
    for k, v in batch.items():
        if k in out or k == "skipped":
            continue
        if k == "swapped":
            out[k] = torch.cat((v, torch.ones_like(v)))
        elif k == "det_targets":
            out[k] = {"batch_idx": torch.cat((v["batch_idx"], v["batch_idx"] + b)),
                      "cls": torch.cat((v["cls"], v["cls"])), "bboxes": torch.cat((v["bboxes"], v["bboxes"])),
                      **({"imgsz": v["imgsz"]} if "imgsz" in v else {})}
        elif isinstance(v, torch.Tensor):
            out[k] = torch.cat((v, v))
        elif isinstance(v, list):
            out[k] = v + v
        else:
            out[k] = v
    out["skipped"] = list(batch.get("skipped", ()))
    return out
