"""Distillation data: paired images and video frames from folders, a held-out split, and the teacher cache.

A data folder holds ``ir/`` and ``vi/`` (or ``vis/``): paired images matched by file stem, and/or
paired video clips (``.mp4``/``.avi``/``.mkv``/``.mov``, same stem), from which frames are sampled
evenly. The teacher's raw output for every item (and every scale) is computed once and stored as a
float16 ``3×H×W`` array (ir, vis, teacher[, w_ir]) under the cache folder, keyed by the teacher's
weight hash, so student epochs never run the teacher again.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.imaging import list_images, load_pair, luma_and_chroma

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")
log = logging.getLogger("tdfusion_edge.distill")


class DistillDataError(TDFusionError):
    """A data folder that gives no usable pairs."""


@dataclass(frozen=True)
class Item:
    """One pair: an image pair (``frame`` None) or frame ``frame`` of a pair of clips."""

    name: str            # unique, readable: <folder>/<stem>[@frame]
    ir_path: str
    vis_path: str
    frame: int | None = None
    val: bool = False


def _subdirs(root: Path) -> tuple[Path, Path]:
    ir = root / "ir"
    vis = next((root / n for n in ("vi", "vis", "visible") if (root / n).is_dir()), None)
    if not ir.is_dir() or vis is None:
        raise DistillDataError(f"data folder {root} needs ir/ and vi/ (or vis/) subfolders")
    return ir, vis


def _videos(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS}


def _hash_unit(text: str) -> float:
    """A stable number in [0,1) from a name (the split must not depend on file order or Python's hash seed)."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 2**32


def frame_count(path: Path) -> int:
    """Frames in a video file (0 when OpenCV cannot open it)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


def discover(folders: list[str | Path], video_frames: int = 40, val_fraction: float = 0.15,
             max_pairs: int = 0) -> list[Item]:
    """Every pair under ``folders`` with its split.

    Images: a folder's ``val.txt`` (one stem per line) names its held-out pairs when present, else a
    stable hash of the name holds out ``val_fraction``. Clips: ``video_frames`` frames evenly spaced;
    the last ``val_fraction`` of each clip's frames are held out (neighbouring frames are near
    duplicates, so a random frame split would leak). ``max_pairs`` > 0 keeps that many image pairs
    per folder, evenly spaced in stem order (to bound the teacher's cost).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DistillDataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    items: list[Item] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise DistillDataError(f"data folder not found: {root}")
        ir_dir, vis_dir = _subdirs(root)
        tag = root.name
        val_list = root / "val.txt"
        val_stems = set(val_list.read_text().split()) if val_list.is_file() else None
        ir_imgs, vis_imgs = list_images(ir_dir), list_images(vis_dir)
        stems = sorted(ir_imgs.keys() & vis_imgs.keys())
        if 0 < max_pairs < len(stems):
            stems = [stems[i] for i in np.unique(np.linspace(0, len(stems) - 1, max_pairs).round().astype(int))]
        for stem in stems:
            name = f"{tag}/{stem}"
            val = stem in val_stems if val_stems is not None else _hash_unit(name) < val_fraction
            items.append(Item(name, str(ir_imgs[stem]), str(vis_imgs[stem]), None, val))
        ir_vids, vis_vids = _videos(ir_dir), _videos(vis_dir)
        for stem in sorted(ir_vids.keys() & vis_vids.keys()):
            n = min(frame_count(ir_vids[stem]), frame_count(vis_vids[stem]))
            if n <= 0 or video_frames <= 0:
                continue
            k = min(video_frames, n)
            frames = np.unique(np.linspace(0, n - 1, k).round().astype(int))
            cut = n * (1.0 - val_fraction)
            for f in frames:
                items.append(Item(f"{tag}/{stem}@{int(f)}", str(ir_vids[stem]), str(vis_vids[stem]), int(f),
                                  bool(f >= cut and val_fraction > 0)))
    if not items:
        raise DistillDataError(f"no infrared/visible pairs found in {', '.join(map(str, folders))}")
    return items


def _read_frame(path: str, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(path)
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok or frame is None:
        raise DistillDataError(f"cannot read frame {index} of {path}")
    return frame


def load_item(item: Item, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(ir_y, vis_y) float32 in [0,1] at the visible size × ``scale`` (area-averaged when shrinking)."""
    if item.frame is None:
        pair = load_pair(Path(item.ir_path), Path(item.vis_path), resize=True)
        ir, vis = pair.ir_y, pair.vis_y
    else:
        ir_img, vis_img = _read_frame(item.ir_path, item.frame), _read_frame(item.vis_path, item.frame)
        if ir_img.shape[:2] != vis_img.shape[:2]:
            ir_img = cv2.resize(ir_img, (vis_img.shape[1], vis_img.shape[0]), interpolation=cv2.INTER_LINEAR)
        ir, vis = luma_and_chroma(ir_img)[0], luma_and_chroma(vis_img)[0]
    if scale != 1.0:
        h, w = ir.shape
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA)
        vis = cv2.resize(vis, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(ir, np.float32), np.ascontiguousarray(vis, np.float32)


def cache_key(item: Item, scale: float) -> str:
    """File-name-safe unique key of an (item, scale)."""
    digest = hashlib.sha1(f"{item.name}|{item.ir_path}|{item.vis_path}|{scale:g}".encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() else "_" for c in item.name)[-48:]
    return f"{safe}_s{scale:g}_{digest}"


Teacher = Callable[[np.ndarray, np.ndarray], np.ndarray]


def build_cache(items: list[Item], scales: list[float], cache_dir: Path, teacher: Teacher,
                weights: Teacher | None = None, progress: bool = True) -> list[tuple[Item, float, Path]]:
    """Compute (once) and store the teacher output of every item × scale; returns (item, scale, file) rows.

    ``teacher(ir, vis)`` → raw fused H×W; ``weights(ir, vis)`` → the loss generator's w_ir (optional).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows, todo = [], []
    for item in items:
        for s in scales:
            path = cache_dir / (cache_key(item, s) + ".npy")
            rows.append((item, s, path))
            if not path.is_file():
                todo.append((item, s, path))
    if todo:
        log.info("teacher: %d of %d outputs to compute (cache %s)", len(todo), len(rows), cache_dir)
    for item, s, path in tqdm(todo, desc="teacher outputs", unit="img", disable=not progress or not todo,
                              dynamic_ncols=True):
        ir, vis = load_item(item, s)
        planes = [ir, vis, np.asarray(teacher(ir, vis), np.float32)]
        if weights is not None:
            planes.append(np.asarray(weights(ir, vis), np.float32))
        arr = np.stack(planes).astype(np.float16)
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(path)  # a killed run leaves no half-written cache entry
    return rows
