"""INT8 calibration data: a folder of IR/visible pairs as a stream of engine-shaped input batches.

``CalibrationBatches`` needs no TensorRT (it is plain numpy and tested on CPU);
``make_entropy_calibrator`` wraps it in TensorRT's ``IInt8EntropyCalibrator2``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from tdfusion_edge.imaging import luma_and_chroma, read_image, scan_pairs

from .errors import ExportError
from .graph_parts import GraphOptions

IR_NAMES = ("ir", "infrared", "thermal", "lwir")
VIS_NAMES = ("vi", "vis", "visible", "rgb")


def find_pair_folders(root: str | os.PathLike) -> tuple[Path, Path]:
    """The IR and visible subfolders of a pairs folder (``ir/`` + ``vi/``, ``vis/`` or ``visible/``, any case)."""
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"calibration folder not found: {root}")
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    ir = next((subdirs[n] for n in IR_NAMES if n in subdirs), None)
    vis = next((subdirs[n] for n in VIS_NAMES if n in subdirs), None)
    if ir is None or vis is None:
        raise ExportError(f"{root} needs an ir/ and a vi/ (or vis/, visible/) subfolder of paired images")
    return ir, vis



def resize_to(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``img`` at (H, W) = ``shape``: area filter when shrinking, bilinear when growing, untouched when equal."""
    h, w = shape
    if img.shape[:2] == (h, w):
        return img
    shrink = img.shape[0] > h or img.shape[1] > w
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

class CalibrationBatches:
    """Iterates input batches (dict name → array) for an engine of ``shape`` (H, W) and ``batch`` size.

    Each pair is resized to the engine shape (INTER_AREA when shrinking); float graphs get Y/255 as
    float32 B×1×H×W, uint8 graphs get the frames as uint8 B×H×W×C. A last incomplete batch is
    dropped (TensorRT calibrates on full batches). ``max_batches`` caps the stream.
    """

    def __init__(self, folder: str | os.PathLike, shape: tuple[int, int], batch: int = 1,
                 options: GraphOptions = GraphOptions(), max_batches: int | None = None):
        if batch < 1:
            raise ExportError(f"calibration batch size must be positive, got {batch}")
        if len(shape) != 2 or min(shape) < 1:
            raise ExportError(f"calibration shape must be (H, W), got {shape!r}")
        ir_dir, vis_dir = find_pair_folders(folder)
        self.pairs = [(ir, vis) for _, ir, vis in scan_pairs(ir_dir, vis_dir).pairs]
        if len(self.pairs) < batch:
            raise ExportError(f"{folder} has {len(self.pairs)} pair(s); INT8 calibration needs at least {batch}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.batch = batch
        self.options = options
        self.max_batches = max_batches

    def __len__(self) -> int:
        n = len(self.pairs) // self.batch
        return n if self.max_batches is None else min(n, self.max_batches)

    def input_names(self) -> list[str]:
        return self.options.input_names()

    def _frame(self, path: Path, channels: int, shape: tuple[int, int]) -> np.ndarray:
        img = read_image(path)
        if img.dtype != np.uint8:  # 16-bit thermal: normalise like the fusion path, then to 8 bit
            y, _ = luma_and_chroma(img)
            img = np.round(y * 255.0).astype(np.uint8)
        if img.ndim == 2 and channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif img.ndim == 3 and channels == 1:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        img = resize_to(img, shape)
        return img[:, :, None] if img.ndim == 2 else img

    def _luma(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        img = read_image(path)
        if img.dtype == np.uint8:
            y, _ = luma_and_chroma(resize_to(img, shape))
        else:  # normalise 16-bit at full resolution first: percentiles of the whole frame
            y, _ = luma_and_chroma(img)
            y = resize_to(y, shape)
        return y.astype(np.float32)[None]

    def sample(self, index: int, native: bool = False) -> dict[str, np.ndarray]:
        """Inputs of pair ``index`` alone (batch axis of 1); ``native`` keeps the visible image's size."""
        ir, vis = self.pairs[index]
        shape = read_image(vis).shape[:2] if native else self.shape
        if self.options.io == "float":
            return {"ir": self._luma(ir, shape)[None], "vis": self._luma(vis, shape)[None]}
        return {"ir": self._frame(ir, self.options.ir_channels, shape)[None],
                "vis": self._frame(vis, self.options.vis_channels, shape)[None]}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for b in range(len(self)):
            items = [self.sample(b * self.batch + i) for i in range(self.batch)]
            yield {name: np.ascontiguousarray(np.concatenate([it[name] for it in items]))
                   for name in self.input_names()}


def make_entropy_calibrator(batches: CalibrationBatches, cache_path: str | os.PathLike):
    """A TensorRT ``IInt8EntropyCalibrator2`` fed from ``batches``; its scale cache is kept at ``cache_path``."""
    from .tensorrt_runtime import DeviceBuffers
    from .trt_import import require_tensorrt

    trt = require_tensorrt()
    cache_path = Path(cache_path)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._device = DeviceBuffers()
            self._held = {}

        def get_batch_size(self) -> int:
            return batches.batch

        def get_batch(self, names, *_):
            try:
                feed = next(self._batches)
            except StopIteration:
                return None
            self._held = {name: self._device.upload(feed[name]) for name in names}
            return [self._device.pointer(self._held[name]) for name in names]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            from tdfusion_edge.validation.output_path import atomic_write_bytes

            atomic_write_bytes(cache_path, bytes(cache))

    return EntropyCalibrator()
