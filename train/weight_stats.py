"""What G learned, in numbers: mean w_ir on labelled objects vs the background, by class and by day/night.

A detection split's boxes (task-view pixels) mark the objects; every other pixel is background. The
"brighter source" check compares w_ir with the sign of I_ir − I_vis pixel by pixel: a G that only learned
"take the brighter image" agrees with it everywhere and correlates strongly with the difference.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn


def box_mask(boxes: torch.Tensor, height: int, width: int, cls: int | None = None) -> np.ndarray:
    """H×W bool mask of the union of N×5 [cls, x1, y1, x2, y2] pixel boxes (only class ``cls`` if given)."""
    mask = np.zeros((height, width), dtype=bool)
    for c, x1, y1, x2, y2 in boxes.tolist():
        if cls is not None and int(c) != cls:
            continue
        x1, y1 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
        x2, y2 = min(int(np.ceil(x2)), width), min(int(np.ceil(y2)), height)
        if x2 > x1 and y2 > y1:
            mask[y1:y2, x1:x2] = True
    return mask


def condition_of(name: str) -> str:
    """MSRS-style stems end in N (night) or D (day); anything else is counted under 'other'."""
    return {"N": "night", "D": "day"}.get(name[-1:].upper(), "other")


class _Sums:
    """Running sums of w_ir per region, so means weigh every pixel alike."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    def add(self, region: str, w: np.ndarray, mask: np.ndarray) -> None:
        if mask.any():
            self.total[region] += float(w[mask].sum())
            self.count[region] += int(mask.sum())

    def means(self) -> dict[str, float]:
        return {k: self.total[k] / self.count[k] for k in self.total if self.count[k]}


@torch.no_grad()
def weight_statistics(loss_gen: nn.Module, samples: Iterable[dict], names: list[str],
                      device: torch.device | str = "cpu",
                      progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict:
    """Mean w_ir of G per region (objects, each class, background) for all frames, day and night.

    ``samples``: dataset items with ``ir``, ``vis`` (1×H×W in [0, 1]), ``boxes`` and ``name``;
    ``names``: the class names. Also: the same means for the rule "w_ir = 1 where I_ir > I_vis, else 0"
    (``brighter_source_rule``: what brightness alone gives), the pixel share where w_ir > ½ exactly when
    I_ir > I_vis, and the mean per-frame Pearson correlation of w_ir with I_ir − I_vis.
    """
    loss_gen = loss_gen.to(device).eval()
    sums = {c: _Sums() for c in ("all", "day", "night", "other")}
    rule = {c: _Sums() for c in sums}  # the same regions under the rule "w_ir = 1 where I_ir > I_vis"
    frames: dict[str, int] = defaultdict(int)
    agree, pixels, corrs = 0, 0, []
    for s in progress(samples):
        ir, vis = s["ir"][None].to(device), s["vis"][None].to(device)
        w = loss_gen(ir, vis)[0, 0].float().cpu().numpy()
        h, wd = w.shape
        objects = box_mask(s["boxes"], h, wd)
        per_class = [box_mask(s["boxes"], h, wd, cls=k) for k in range(len(names))]
        cond = condition_of(s["name"])
        frames[cond] += 1
        diff = (ir - vis)[0, 0].float().cpu().numpy()
        brighter = (diff > 0).astype(np.float64)
        for key in ("all", cond):
            for acc, values in ((sums[key], w), (rule[key], brighter)):
                acc.add("objects", values, objects)
                acc.add("background", values, ~objects)
                for cls_name, mask in zip(names, per_class):
                    acc.add(cls_name, values, mask)
        agree += int(((w > 0.5) == (diff > 0)).sum())
        pixels += w.size
        if w.std() > 0 and diff.std() > 0:
            corrs.append(float(np.corrcoef(w.ravel(), diff.ravel())[0, 1]))
    out: dict = {"frames": {k: v for k, v in frames.items()}}
    for key, acc in sums.items():
        if frames.get(key) or key == "all":
            out[key] = acc.means()
            out[key]["pixels"] = dict(acc.count)
    out["brighter_source_rule"] = {key: acc.means() for key, acc in rule.items() if frames.get(key) or key == "all"}
    out["agree_with_brighter_source"] = agree / pixels if pixels else float("nan")
    out["corr_with_ir_minus_vis"] = float(np.mean(corrs)) if corrs else float("nan")
    return out
