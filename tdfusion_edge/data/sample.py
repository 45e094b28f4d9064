"""Building one sample dict from decoded 8-bit images and labels.

Keys (tensors are float32 in [0, 1] unless stated):

- ``crop_ir``, ``crop_vis``: 1×C×C fusion-loss crop (view ``"fusion"``; C = crop size)
- ``ir``, ``vis``: 1×h×w task view, the whole image resized to the task size (view ``"task"``);
  ``vis`` is Y of OpenCV's YCrCb / 255, ``ir`` the IR luminance / 255
- ``vis_crcb``: 2×h×w CrCb / 255 of the task view (only when chroma is asked for)
- ``mask``: h×w int64 class ids, ignore 255 (seg) — ``boxes``: N×5 float32 [class, x1, y1, x2, y2]
  in pixels of the task view (det)
- ``name`` (str), ``index`` (int), ``orig_size`` ((H, W) of the source images)
"""
from __future__ import annotations

import numpy as np
import torch

from .image_io import bgr_to_ycrcb
from .transforms import crop_pad, crop_window, resize_boxes, resize_image, resize_mask

VIEWS = ("fusion", "task")


def _plane(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]


def build_sample(ir: np.ndarray, vis_bgr: np.ndarray, *, name: str, index: int,
                 task_size: tuple[int, int] | None, crop_size: int, rng: np.random.Generator,
                 mask: np.ndarray | None = None, boxes: np.ndarray | None = None,
                 views: tuple[str, ...] = VIEWS, with_chroma: bool = False) -> dict:
    """A sample dict (see the module doc) from IR uint8 H×W, visible uint8 H×W×3 BGR and labels."""
    y, crcb = bgr_to_ycrcb(vis_bgr)
    h, w = ir.shape[:2]
    out: dict = {"name": name, "index": int(index), "orig_size": (h, w)}
    if "fusion" in views:
        top, left = crop_window(h, w, crop_size, rng)
        # crop the 8-bit planes first: only the window is converted to float
        out["crop_ir"] = _plane(crop_pad(ir, top, left, crop_size) * np.float32(1 / 255))
        out["crop_vis"] = _plane(crop_pad(y, top, left, crop_size) * np.float32(1 / 255))
    if "task" in views:
        # resize in float like the released F.interpolate on [0, 1] tensors (no 8-bit rounding)
        out["ir"] = _plane(resize_image(ir.astype(np.float32) * np.float32(1 / 255), task_size))
        out["vis"] = _plane(resize_image(y.astype(np.float32) * np.float32(1 / 255), task_size))
        if with_chroma:
            c = resize_image(crcb.astype(np.float32) * np.float32(1 / 255), task_size)
            out["vis_crcb"] = torch.from_numpy(np.ascontiguousarray(c.transpose(2, 0, 1)))
        if mask is not None:
            out["mask"] = torch.from_numpy(resize_mask(mask, task_size).astype(np.int64))
        if boxes is not None:
            out["boxes"] = torch.from_numpy(resize_boxes(boxes, (h, w), task_size))
    return out
