"""Drawing on the output frame: detection boxes and labels, the HUD, the side-by-side view."""
from __future__ import annotations

import cv2
import numpy as np

from .detection import Detections

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colour(cls: int) -> tuple[int, int, int]:
    """A stable, well-separated BGR colour per class id (golden-angle hues)."""
    hue = int((cls * 137.508) % 180)
    bgr = cv2.cvtColor(np.array([[[hue, 220, 255]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def _scale(img: np.ndarray) -> float:
    return max(0.3, min(img.shape[:2]) / 600.0)


def draw_detections(img: np.ndarray, dets: Detections) -> np.ndarray:
    """Boxes with 'name 0.87' labels, drawn in place on a BGR image."""
    s = _scale(img)
    thick = max(1, int(round(2 * s)))
    for box, score, cls in zip(dets.boxes, dets.scores, dets.classes):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = class_colour(int(cls))
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, thick)
        label = f"{dets.name(cls)} {score:.2f}"
        (tw, th), base = cv2.getTextSize(label, _FONT, 0.5 * s * 1.6, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        cv2.rectangle(img, (x1, ty - th - base), (x1 + tw + 2, ty + base - 2), colour, -1)
        cv2.putText(img, label, (x1 + 1, ty - base + 1), _FONT, 0.5 * s * 1.6, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def draw_hud(img: np.ndarray, lines: list[str], alerts: list[str] = ()) -> np.ndarray:
    """Text lines top-left on a darkened box; alerts (e.g. 'IR LOST') in red below them."""
    s = _scale(img) * 1.2
    line_h = int(16 * s) + 2
    rows = list(lines) + list(alerts)
    if not rows:
        return img
    width = max(cv2.getTextSize(r, _FONT, 0.4 * s, 1)[0][0] for r in rows) + 8
    height = line_h * len(rows) + 6
    h, w = img.shape[:2]
    roi = img[0:min(h, height), 0:min(w, width)]
    roi[:] = (roi.astype(np.uint16) * 2 // 5).astype(np.uint8)  # dim the box; only the box is touched
    for i, row in enumerate(rows):
        colour = (60, 60, 255) if i >= len(lines) else (255, 255, 255)
        cv2.putText(img, row, (4, line_h * (i + 1)), _FONT, 0.4 * s, colour, 1, cv2.LINE_AA)
    return img


def hud_lines(fps: float, stage_ms: dict[str, float], dropped: int, unmatched: int, mode: str,
              skew_ms: float | None, source_fps: dict[str, float]) -> tuple[list[str], list[str]]:
    """The HUD text: FPS, per-stage milliseconds, drops; alerts when a source is missing."""
    order = ("preprocess", "fusion", "compose", "detect", "overlay", "sink")
    stages = " ".join(f"{k[:4]} {stage_ms[k]:.0f}" for k in order if k in stage_ms)
    sources = " ".join(f"{k} {v:.0f}" for k, v in source_fps.items())
    lines = [f"{fps:5.1f} FPS (in: {sources})" + (f" skew {skew_ms:+.0f}ms" if skew_ms is not None else ""),
             f"ms: {stages}" + _latency(stage_ms), f"dropped {dropped} unmatched {unmatched}"]
    alerts = {"ir_only": ["VISIBLE LOST - IR only"], "vis_only": ["IR LOST - visible only"]}.get(mode, [])
    return lines, alerts


def _latency(stage_ms: dict[str, float]) -> str:
    """' | lat N' : capture-to-output when known (live clocks), else pair-to-output."""
    ms = stage_ms.get("e2e", stage_ms.get("pipeline"))
    return "" if ms is None else f" | lat {ms:.0f}"


def to_bgr(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img


def side_by_side(panels: list[np.ndarray], titles: list[str]) -> np.ndarray:
    """Panels of equal height next to each other, each titled (a missing source shows as a black panel)."""
    h = max(p.shape[0] for p in panels)
    out = []
    for panel, title in zip(panels, titles):
        panel = to_bgr(panel)
        if panel.shape[0] != h:
            panel = cv2.resize(panel, (round(panel.shape[1] * h / panel.shape[0]), h))
        panel = panel.copy()
        cv2.putText(panel, title, (4, h - 6), _FONT, 0.4 * _scale(panel) * 1.2, (0, 255, 255), 1, cv2.LINE_AA)
        out.append(panel)
    return np.concatenate(out, axis=1)
