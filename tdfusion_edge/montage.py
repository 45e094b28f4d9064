"""Side-by-side montages of sources and fused results, for people to look at."""
from __future__ import annotations

import cv2
import numpy as np


def _bgr(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    scale = max(0.4, img.shape[1] / 640)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (tw + 8, th + base + 6), (0, 0, 0), -1)
    cv2.putText(out, text, (4, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def montage(rows: list[list[tuple[str, np.ndarray]]], gap: int = 4) -> np.ndarray:
    """Grid of labelled tiles (gray or BGR, same size within a row) as one BGR image."""
    row_imgs = []
    for row in rows:
        tiles = [_label(_bgr(img), name) for name, img in row]
        h = tiles[0].shape[0]
        spacer = np.full((h, gap, 3), 255, np.uint8)
        parts = []
        for tile in tiles:
            parts += [tile, spacer]
        row_imgs.append(np.hstack(parts[:-1]))
    width = max(r.shape[1] for r in row_imgs)
    padded = []
    for r in row_imgs:
        r = np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
        padded += [r, np.full((gap, width, 3), 255, np.uint8)]
    return np.vstack(padded[:-1])
