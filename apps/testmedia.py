"""Recorded inputs for trying, testing and benchmarking the live app: paired IR/visible video files
made from the synthetic stream or from a folder of registered image pairs (e.g. RoadScene)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.imaging import read_image, scan_pairs

from .synthetic_stream import SyntheticWorld


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Write 8-bit frames (gray or BGR) to an mp4v/MJPG video; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = "MJPG" if path.suffix.lower() in (".avi", ".mkv") else "mp4v"
    writer = None
    try:
        for frame in frames:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame
            if writer is None:
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (frame.shape[1], frame.shape[0]))
                if not writer.isOpened():
                    raise TDFusionError(f"cannot write video {path}")
            writer.write(frame)
    finally:
        if writer is not None:
            writer.release()
    return path


def synthetic_video_pair(out_dir: str | os.PathLike, frames: int = 100, size: tuple[int, int] = (240, 320),
                         fps: float = 15.0, seed: int = 0, condition: str = "random") -> tuple[Path, Path]:
    """``ir.mp4`` and ``vis.mp4`` of the synthetic moving scene, frame-aligned."""
    world = SyntheticWorld(seed, size[0], size[1], condition)
    out = Path(out_dir)
    times = [i / fps for i in range(frames)]
    ir = write_video(out / "ir.mp4", (world.render(t, "ir") for t in times), fps)
    vis = write_video(out / "vis.mp4", (world.render(t, "vis") for t in times), fps)
    return ir, vis


def pairs_video_pair(ir_dir: str | os.PathLike, vis_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     size: tuple[int, int] = (240, 320), fps: float = 10.0, repeat: int = 1) -> tuple[Path, Path]:
    """Registered image pairs (matched by file stem) resized to ``size`` as two aligned videos."""
    scan = scan_pairs(ir_dir, vis_dir)
    if not scan.pairs:
        raise TDFusionError(f"no image pairs in {ir_dir} and {vis_dir}")
    hw = (size[1], size[0])

    def frames(index: int):
        for _ in range(repeat):
            for _, ir_path, vis_path in scan.pairs:
                img = read_image((ir_path, vis_path)[index])
                if img.dtype != np.uint8:
                    img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
                yield cv2.resize(img, hw, interpolation=cv2.INTER_AREA)

    out = Path(out_dir)
    return write_video(out / "ir.mp4", frames(0), fps), write_video(out / "vis.mp4", frames(1), fps)
