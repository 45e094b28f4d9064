"""Calibration helpers with pictures: clicking point pairs in a window, and a preview of the result."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.imaging import luma_and_chroma, write_image

from .registration import Homography
from .sinks import has_display


def to_view(img: np.ndarray) -> np.ndarray:
    """Any 8/16-bit frame as a displayable 8-bit BGR image."""
    if img.dtype != np.uint8:
        y, _ = luma_and_chroma(img)
        img = np.round(y * 255).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img.copy()


def click_point_pairs(ir: np.ndarray, vis: np.ndarray) -> tuple[list, list]:
    """Click a point in the IR image (left), then the same point in the visible one (right); repeat.
    Enter or Esc finishes, Backspace undoes the last click."""
    if not has_display():
        raise TDFusionError("--click needs a display; give the points with --pair or --points instead")
    left, right = to_view(ir), to_view(vis)
    scale = right.shape[0] / left.shape[0]
    left = cv2.resize(left, (round(left.shape[1] * scale), right.shape[0]))
    offset = left.shape[1]
    clicks: list[tuple[float, float]] = []

    def on_mouse(event, x, y, flags, param):
        if event != cv2.EVENT_LBUTTONDOWN:
            return
        want_ir = len(clicks) % 2 == 0
        if want_ir and x < offset:
            clicks.append((x / scale, y / scale))
        elif not want_ir and x >= offset:
            clicks.append((x - offset, y))

    title = "calibrate: click IR point, then visible point; Enter to finish"
    cv2.namedWindow(title, cv2.WINDOW_NORMAL)
    cv2.setMouseCallback(title, on_mouse)
    try:
        while True:
            canvas = np.concatenate([left, right], axis=1)
            for i, (x, y) in enumerate(clicks):
                px = (int(x * scale), int(y * scale)) if i % 2 == 0 else (int(x) + offset, int(y))
                cv2.circle(canvas, px, 4, (0, 255, 255), -1)
                cv2.putText(canvas, str(i // 2 + 1), (px[0] + 5, px[1] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                            (0, 255, 255), 1)
            cv2.imshow(title, canvas)
            key = cv2.waitKey(30) & 0xFF
            if key in (13, 10, 27):
                break
            if key == 8 and clicks:
                clicks.pop()
    finally:
        cv2.destroyWindow(title)
    n = len(clicks) // 2
    return [clicks[2 * i] for i in range(n)], [clicks[2 * i + 1] for i in range(n)]


def write_preview(ir: np.ndarray, vis: np.ndarray, h: Homography, path: str | os.PathLike) -> Path:
    """The IR image warped by ``h`` over the visible one (50 % blend, IR in magenta) to judge the fit."""
    ir_view, vis_view = to_view(ir), to_view(vis)
    warped = cv2.warpPerspective(ir_view, h.matrix, (vis_view.shape[1], vis_view.shape[0]))
    tint = warped.copy()
    tint[:, :, 1] = 0
    blend = cv2.addWeighted(vis_view, 0.5, tint, 0.5, 0)
    return write_image(path, blend)
