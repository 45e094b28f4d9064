"""Train-time views of a pair, as in the released code: a random square crop for the fusion loss and the
whole image resized to the dataset's task size for the task loss, labels transformed with the pixels."""
from __future__ import annotations

import cv2
import numpy as np


def crop_window(height: int, width: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a uniformly drawn ``size``×``size`` window (0 along a side shorter than ``size``)."""
    top = int(rng.integers(0, height - size + 1)) if height > size else 0
    left = int(rng.integers(0, width - size + 1)) if width > size else 0
    return top, left


def crop_pad(img: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """The ``size``×``size`` window at (top, left); sides shorter than ``size`` are reflect-padded.

    Reflection, not zeros: a zero border would add artificial edges that the gradient term of the fusion
    loss would then ask the network to reproduce.
    """
    win = img[top:top + size, left:left + size]
    ph, pw = size - win.shape[0], size - win.shape[1]
    if ph or pw:
        win = cv2.copyMakeBorder(np.ascontiguousarray(win), 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
    return win


def resize_image(img: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Bilinear resize to (h, w) with half-pixel centres (= torch ``interpolate(mode='bilinear')``)."""
    if size is None or img.shape[:2] == tuple(size):
        return img
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Nearest-neighbour resize of a label mask to (h, w)."""
    if size is None or mask.shape[:2] == tuple(size):
        return mask
    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def resize_boxes(boxes: np.ndarray, src: tuple[int, int], dst: tuple[int, int] | None) -> np.ndarray:
    """N×5 [class, x1, y1, x2, y2] pixel boxes of an image of size ``src`` scaled to size ``dst``."""
    if dst is None or tuple(src) == tuple(dst) or len(boxes) == 0:
        return boxes.astype(np.float32, copy=True)
    out = boxes.astype(np.float32, copy=True)
    out[:, [1, 3]] *= dst[1] / src[1]
    out[:, [2, 4]] *= dst[0] / src[0]
    return out


def crop_boxes(boxes: np.ndarray, top: int, left: int, size: int, min_size: float = 1.0) -> np.ndarray:
    """Boxes seen through a ``size`` window at (top, left): shifted, clipped, tiny remnants dropped."""
    if len(boxes) == 0:
        return boxes.astype(np.float32, copy=True)
    out = boxes.astype(np.float32, copy=True)
    out[:, [1, 3]] = (out[:, [1, 3]] - left).clip(0, size)
    out[:, [2, 4]] = (out[:, [2, 4]] - top).clip(0, size)
    keep = ((out[:, 3] - out[:, 1]) >= min_size) & ((out[:, 4] - out[:, 2]) >= min_size)
    return out[keep]
