"""SyntheticPairs: procedural labelled IR–visible scenes (``make_scene``) as a dataset, no files needed."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from tdfusion_edge.errors import TDFusionError

from .dataset import sample_rng, unpack_key
from .report import ScanReport
from .sample import VIEWS, build_sample
from .synthetic import DEFAULT_OBJECTS
from .transforms import resize_mask


def synthetic_names(task: str) -> tuple[str, ...]:
    """Class names of the synthetic scenes: seg (background, person, car) or det (person, car)."""
    from .synthetic import DET_CLASSES, SEG_CLASSES

    return tuple(SEG_CLASSES if task == "seg" else DET_CLASSES)


class SyntheticPairs(Dataset):
    """``length`` scenes, scene i drawn with seed ``base_seed + i`` (deterministic, any worker).

    Samples have the keys of ``build_sample``; with ``with_modal_masks`` also ``ir_only`` and
    ``vis_only`` (h×w bool, task view): pixels of objects visible in one modality only.
    """

    def __init__(self, length: int = 64, task: str = "seg", height: int = 96, width: int = 128,
                 base_seed: int = 0, condition: str = "random", task_size: tuple[int, int] | None = None,
                 crop_size: int = 64, views: tuple[str, ...] = VIEWS, with_chroma: bool = False,
                 with_modal_masks: bool = False, objects: tuple[int, int] = DEFAULT_OBJECTS):
        if task not in ("seg", "det"):
            raise TDFusionError(f"task must be 'seg' or 'det', got {task!r}")
        if length < 1:
            raise TDFusionError("a synthetic dataset needs at least one sample")
        self.length, self.task, self.height, self.width = int(length), task, int(height), int(width)
        self.base_seed, self.condition = int(base_seed), condition
        self.task_size = tuple(task_size) if task_size else None
        self.crop_size, self.views, self.with_chroma = crop_size, tuple(views), with_chroma
        self.with_modal_masks = with_modal_masks
        self.objects = (int(objects[0]), int(objects[1]))
        self.names = synthetic_names(task)
        self.report = ScanReport(split=f"synthetic-{task}", found=self.length, usable=self.length)

    @property
    def num_classes(self) -> int:
        """Classes of the task (background included for segmentation)."""
        return len(self.names)

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int):
        """The raw SyntheticScene of ``index``."""
        from .synthetic import make_scene

        if not 0 <= index < self.length:
            raise IndexError(index)
        return make_scene(self.base_seed + index, self.height, self.width, self.condition, self.objects)

    def __getitem__(self, item) -> dict:
        index, epoch, seed = unpack_key(item)
        s = self.scene(index)
        sample = build_sample(s.ir, s.vis, name=f"synthetic_{self.base_seed + index:07d}", index=index,
                              task_size=self.task_size, crop_size=self.crop_size, rng=sample_rng(seed, epoch, index),
                              mask=s.mask if self.task == "seg" else None,
                              boxes=s.boxes if self.task == "det" else None,
                              views=self.views, with_chroma=self.with_chroma)
        if self.with_modal_masks and "task" in self.views:
            for key in ("ir_only", "vis_only"):
                m = resize_mask(getattr(s, key).astype(np.uint8), self.task_size)
                sample[key] = torch.from_numpy(m.astype(bool))
        sample["skipped"] = []
        return sample
