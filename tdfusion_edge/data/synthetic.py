"""Procedural paired infrared/visible street scenes with labels, made on the fly (no download).

Night scenes hide warm people and cars in the dark visible image while the thermal image shows
them (IR-only objects); day scenes add cold parked cars that are plain in the visible image but at
ambient temperature in the thermal one (visible-only objects). Masks and boxes come with each scene.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SEG_CLASSES = ("background", "person", "car")
DET_CLASSES = ("person", "car")
CONDITIONS = ("day", "night")
DEFAULT_OBJECTS = (2, 5)  # [min, max] people and cars per scene


@dataclass
class SyntheticScene:
    """One paired frame: images, semantic mask, boxes and the single-modality object masks."""

    ir: np.ndarray        # uint8 H×W thermal
    vis: np.ndarray       # uint8 H×W×3 BGR
    mask: np.ndarray      # uint8 H×W: 0 background, 1 person, 2 car
    boxes: np.ndarray     # float32 N×5: class (0 person, 1 car), x1, y1, x2, y2 in pixels
    ir_only: np.ndarray   # bool H×W: objects visible only in the thermal image
    vis_only: np.ndarray  # bool H×W: objects visible only in the visible image
    condition: str


def smooth_noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: random values on a coarse grid, resized up."""
    gh, gw = max(2, h // scale), max(2, w // scale)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _person_mask(h: int, w: int, cx: float, foot: float, height: float) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    width = height * 0.3
    head = height * 0.12
    body_top = foot - height + 2 * head
    cv2.ellipse(m, (int(cx), int(foot - height + head)), (max(1, int(head * 0.8)), max(1, int(head))), 0, 0, 360, 1, -1)
    cv2.ellipse(m, (int(cx), int((body_top + foot) / 2)), (max(1, int(width / 2)), max(1, int((foot - body_top) / 2))),
                0, 0, 360, 1, -1)
    return m.astype(bool)


def _car_mask(h: int, w: int, cx: float, bottom: float, length: float) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    height = length * 0.45
    x1, x2 = int(cx - length / 2), int(cx + length / 2)
    cv2.rectangle(m, (x1, int(bottom - height * 0.6)), (x2, int(bottom - height * 0.1)), 1, -1)
    cv2.rectangle(m, (int(x1 + length * 0.2), int(bottom - height)), (int(x2 - length * 0.2), int(bottom - height * 0.55)), 1, -1)
    r = max(1, int(height * 0.18))
    cv2.circle(m, (int(x1 + length * 0.22), int(bottom - r)), r, 1, -1)
    cv2.circle(m, (int(x2 - length * 0.22), int(bottom - r)), r, 1, -1)
    return m.astype(bool)


def _background(rng: np.random.Generator, h: int, w: int, night: bool, horizon: int):
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    sky = np.broadcast_to(yy < horizon / h, (h, w))
    vis = np.zeros((h, w, 3), np.float32)
    sky_top = np.array([0.85, 0.65, 0.45], np.float32) if not night else np.array([0.25, 0.12, 0.08], np.float32)
    sky_rows = sky_top[None, None, :] * (1.0 - 0.4 * yy[:, :, None] / max(horizon / h, 1e-3))
    vis[:] = sky_rows
    ground = 0.35 + 0.08 * smooth_noise(rng, h, w, 6) + 0.05 * smooth_noise(rng, h, w, 2)
    vis[~sky] = np.stack([ground, ground * 1.02, ground * 0.98], axis=2)[~sky]
    ir = np.where(sky, 0.12 + 0.05 * yy, 0.42 + 0.06 * smooth_noise(rng, h, w, 10)).astype(np.float32)
    # Buildings along the horizon: textured windows in visible, mildly warm facades in thermal.
    x = 0
    while x < w:
        bw = int(rng.integers(max(4, w // 10), max(5, w // 4)))
        bh = int(rng.integers(max(3, h // 8), max(4, h // 3)))
        top = max(0, horizon - bh)
        colour = rng.uniform(0.3, 0.7, 3).astype(np.float32)
        vis[top:horizon, x:x + bw] = colour
        step = max(3, h // 30)
        win = (np.arange(top, horizon)[:, None] % step < step // 2) & (np.arange(x, min(w, x + bw))[None, :] % step < step // 2)
        lit = (rng.random(win.shape) < (0.3 if night else 0.0)) & win
        region = vis[top:horizon, x:x + bw]
        region[win] *= 0.55
        region[lit] = np.array([0.55, 0.85, 0.95], np.float32)
        ir[top:horizon, x:x + bw] = 0.5 + 0.05 * rng.standard_normal()
        x += bw + int(rng.integers(0, max(2, w // 12)))
    # Road with lane markings.
    road = (np.abs(np.arange(w)[None, :] - w / 2) < (yy * h - horizon).clip(0) * 1.4) & ~sky
    vis[road] = 0.28
    lane = road & (np.abs(np.arange(w)[None, :] - w / 2) < 1 + (yy * h - horizon).clip(0) * 0.03) & \
        ((np.arange(h)[:, None] // max(2, h // 24)) % 2 == 0)
    vis[lane] = 0.9
    ir[road] += 0.06 if not night else 0.03
    return vis, ir, sky


def make_scene(seed: int, height: int = 240, width: int = 320, condition: str = "random",
               objects: tuple[int, int] = DEFAULT_OBJECTS) -> SyntheticScene:
    """A deterministic scene for ``seed``: ``condition`` is 'day', 'night' or 'random'; ``objects`` is the
    [min, max] number of people and cars placed (some may end up hidden behind nearer ones)."""
    if condition not in CONDITIONS + ("random",):
        raise ValueError(f"condition must be one of {CONDITIONS + ('random',)}, got {condition!r}")
    if height < 16 or width < 16:
        raise ValueError("synthetic scenes need at least 16×16 pixels")
    lo, hi = (int(v) for v in objects)
    if not 0 <= lo <= hi:
        raise ValueError(f"objects must be [min, max] with 0 <= min <= max, got {list(objects)}")
    rng = np.random.default_rng(seed)
    night = bool(rng.random() < 0.5) if condition == "random" else condition == "night"
    h, w = height, width
    horizon = int(h * rng.uniform(0.35, 0.5))
    vis, ir, _ = _background(rng, h, w, night, horizon)
    mask = np.zeros((h, w), np.uint8)
    ir_only = np.zeros((h, w), bool)
    vis_only = np.zeros((h, w), bool)
    boxes = []
    n_objects = int(rng.integers(lo, hi + 1))
    # Far objects first so near ones are drawn over them.
    feet = np.sort(rng.uniform(horizon + 0.1 * (h - horizon), h - 2, n_objects))
    for foot in feet:
        depth = (foot - horizon) / (h - horizon)
        cx = rng.uniform(0.1 * w, 0.9 * w)
        is_person = rng.random() < 0.55
        if is_person:
            obj = _person_mask(h, w, cx, foot, h * (0.12 + 0.35 * depth))
            warm, cold_painted = True, False
        else:
            obj = _car_mask(h, w, cx, foot, w * (0.08 + 0.3 * depth))
            warm = night or rng.random() < 0.5       # parked cars by day sit at ambient temperature
            cold_painted = not warm
        if not obj.any():
            continue
        colour = rng.uniform(0.05, 0.95, 3).astype(np.float32)
        texture = 0.08 * smooth_noise(rng, h, w, 3)[obj]
        vis[obj] = colour[None, :] + texture[:, None]
        if warm:
            ir[obj] = rng.uniform(0.8, 0.95) + 0.03 * smooth_noise(rng, h, w, 4)[obj]
        cls = 1 if is_person else 2
        mask[obj] = cls
        ir_only[obj] = night
        vis_only[obj] = cold_painted and not night
        ir_only[obj & (mask != cls)] = False
        ys, xs = np.nonzero(obj)
        boxes.append((cls - 1, xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    # Later objects may hide earlier ones: keep only the visible part in the per-modality masks.
    ir_only &= mask > 0
    vis_only &= mask > 0
    if night:
        # Dim, noisy visible frame; a few street lights give local glows but no view of the objects.
        vis = vis * 0.12
        for _ in range(int(rng.integers(1, 4))):
            lx, ly = rng.uniform(0, w), rng.uniform(0, horizon)
            dist = np.hypot(np.arange(w)[None, :] - lx, np.arange(h)[:, None] - ly)
            glow = np.exp(-dist / (0.08 * w))[:, :, None] * np.array([0.5, 0.8, 0.95], np.float32)
            vis = np.maximum(vis, glow.astype(np.float32))
        vis += 0.015 * rng.standard_normal(vis.shape).astype(np.float32)
    else:
        vis += 0.01 * rng.standard_normal(vis.shape).astype(np.float32)
    # Thermal optics are soft, and the sensor adds noise.
    ir = cv2.GaussianBlur(ir, (0, 0), sigmaX=max(0.6, w / 400))
    ir += 0.012 * rng.standard_normal(ir.shape).astype(np.float32)
    ir_u8 = np.round(np.clip(ir, 0, 1) * 255).astype(np.uint8)
    vis_u8 = np.round(np.clip(vis, 0, 1) * 255).astype(np.uint8)
    box_arr = np.asarray(boxes, np.float32).reshape(-1, 5)
    return SyntheticScene(ir_u8, vis_u8, mask, box_arr, ir_only, vis_only, "night" if night else "day")
