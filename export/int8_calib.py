"""Real IR/visible pairs for INT8 calibration on the CPU: a folder of image pairs or of paired clips,
split into a calibration set and a disjoint held-out set for the quality gate.

A source folder has ``ir/`` and ``vi/`` (or ``vis/``, ``visible/``) subfolders holding either paired
images (RoadScene, MSRS) or paired videos with the same names (M3SVD ``ir/<clip>.mp4`` +
``vi/<clip>.mp4``). Every sample is the released inference's input: OpenCV YCrCb Y / 255, resized
to the model's H×W (INTER_AREA when shrinking), as float32 1×1×H×W.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from tdfusion_edge.imaging import luma_and_chroma, read_image, scan_pairs

from .calibration import find_pair_folders, resize_to
from .errors import ExportError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")




class PairSamples:
    """The pairs (or video frame pairs) of one or more folders; ``frames(i)`` reads pair ``i`` as BGR/gray images."""

    def __init__(self, folders: str | os.PathLike | Sequence[str | os.PathLike], frames_per_clip: int = 24):
        folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
        if not folders:
            raise ExportError("INT8 calibration needs at least one folder of real pairs (--calib DIR)")
        self.folders = [Path(f) for f in folders]
        self.items: list[tuple] = []          # ("image", ir_path, vis_path) or ("video", ir, vis, frame index)
        for folder in self.folders:
            ir_dir, vis_dir = find_pair_folders(folder)
            clips = sorted(p for p in ir_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if clips:
                self.items += self._clip_items(clips, vis_dir, frames_per_clip)
            else:
                self.items += [("image", ir, vis) for _, ir, vis in scan_pairs(ir_dir, vis_dir).pairs]
        if not self.items:
            raise ExportError(f"no IR/visible pairs found in {', '.join(map(str, self.folders))}")

    @staticmethod
    def _clip_items(clips: list[Path], vis_dir: Path, per_clip: int) -> list[tuple]:
        items = []
        for ir in clips:
            vis = next((p for p in vis_dir.iterdir() if p.stem == ir.stem and p.suffix.lower() in VIDEO_SUFFIXES), None)
            if vis is None:
                continue
            cap = cv2.VideoCapture(str(ir))
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            cap.release()
            # Evenly spaced frames: consecutive frames of a clip are near-duplicates.
            items += [("video", ir, vis, int(i)) for i in np.linspace(0, max(n - 1, 0), min(per_clip, max(n, 1)))]
        return items

    def __len__(self) -> int:
        return len(self.items)

    def identity(self) -> str:
        """A short hash of what the samples are (folders and their pair lists), for cache keys."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update("|".join(str(p) for p in item).encode())
        return digest.hexdigest()[:12]

    def frames(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """IR and visible images of sample ``index`` as read (uint8 BGR/gray, or 16-bit thermal)."""
        item = self.items[index]
        if item[0] == "image":
            return read_image(item[1]), read_image(item[2])
        return tuple(_video_frame(path, item[3]) for path in item[1:3])

    def luma(self, index: int, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """Sample ``index`` as the fusion graph's float inputs ``ir``, ``vis`` (1×1×H×W, Y/255)."""
        out = {}
        for name, img in zip(("ir", "vis"), self.frames(index)):
            if img.dtype == np.uint8:
                y, _ = luma_and_chroma(resize_to(img, shape))
            else:  # 16-bit thermal: normalise on the whole frame first, as the fusion path does
                y, _ = luma_and_chroma(img)
                y = resize_to(y, shape)
            out[name] = np.ascontiguousarray(y, dtype=np.float32)[None, None]
        return out


def _video_frame(path: Path, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise ExportError(f"cannot read frame {index} of {path}")
    return frame


def split_indices(total: int, calib: int, held_out: int) -> tuple[list[int], list[int]]:
    """Disjoint calibration and held-out indices, both spread evenly over ``total`` samples.

    The held-out set is taken first (every k-th sample) so that the gate never sees a pair the
    ranges were calibrated on; calibration gets up to ``calib`` of the rest.
    """
    if total < 2:
        raise ExportError(f"INT8 calibration needs at least 2 real pairs (one to calibrate, one to gate), got {total}")
    held_out = max(1, min(held_out, total // 2))
    step = total / held_out
    held = sorted({int(step * i + step / 2) for i in range(held_out)})
    rest = [i for i in range(total) if i not in set(held)]
    pick = np.linspace(0, len(rest) - 1, min(calib, len(rest))).round().astype(int)
    return [rest[i] for i in sorted(set(pick.tolist()))], held


class FeedReader(CalibrationDataReader):
    """An onnxruntime ``CalibrationDataReader`` over input dicts produced lazily (one pair in memory at a time)."""

    def __init__(self, produce: Iterator[dict[str, np.ndarray]]):
        super().__init__()
        self._it = iter(produce)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._it, None)
        self.count += item is not None
        return item
