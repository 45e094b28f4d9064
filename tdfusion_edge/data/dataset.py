"""PairDataset: scanned IR–visible pairs with labels, yielding the two train-time views per sample."""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from tdfusion_edge.errors import ImageReadError, TDFusionError

from .image_io import read_bgr, read_gray, read_mask
from .report import ScanReport
from .sample import VIEWS, build_sample
from .scan import PairRecord

# Consecutive unreadable samples tolerated before giving up (a whole unmounted disk is not "a bad file").
MAX_CONSECUTIVE_FAILURES = 32


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample in one epoch: crops are reproducible and resume exactly."""
    return np.random.default_rng((seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, index))


def unpack_key(item) -> tuple[int, int, int]:
    """(index, epoch, seed) from a plain index or a (index, epoch, seed) key of ResumableSampler."""
    if isinstance(item, (tuple, list)):
        return int(item[0]), int(item[1]), int(item[2])
    return int(item), 0, 0


class PairDataset(Dataset):
    """Samples of scanned pairs; a file unreadable at load time is skipped and named under ``skipped``."""

    def __init__(self, records: list[PairRecord], *, task: str, names: tuple[str, ...],
                 task_size: tuple[int, int] | None, crop_size: int = 256, views: tuple[str, ...] = VIEWS,
                 with_chroma: bool = False, report: ScanReport | None = None):
        if not records:
            raise TDFusionError(f"no usable samples ({report.summary() if report else 'empty dataset'})")
        bad = set(views) - set(VIEWS)
        if bad or not views:
            raise TDFusionError(f"views must be a subset of {VIEWS}, got {views}")
        self.records = records
        self.task, self.names = task, tuple(names)
        self.task_size = tuple(task_size) if task_size else None
        self.crop_size, self.views, self.with_chroma = crop_size, tuple(views), with_chroma
        self.report = report or ScanReport(found=len(records), usable=len(records))
        # a paired folder without labels gives fusion-only samples (no mask / boxes keys)
        self.labelled = any(r.label is not None for r in records)
        self._bad: set[int] = set()  # per worker process: indices already known to fail

    @property
    def num_classes(self) -> int:
        """Classes of the task (background included for segmentation)."""
        return len(self.names)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int, rng: np.random.Generator) -> dict:
        """The sample at ``index``; raises ImageReadError when one of its files cannot be decoded."""
        rec = self.records[index]
        ir, vis = read_gray(rec.ir), read_bgr(rec.vis)
        if ir.shape[:2] != vis.shape[:2]:
            raise ImageReadError(f"{rec.name}: IR and visible sizes differ")
        mask = read_mask(rec.label) if self.task == "seg" and self.labelled else None
        if mask is not None and mask.shape[:2] != ir.shape[:2]:
            raise ImageReadError(f"{rec.name}: mask size differs from the images")
        boxes = None
        if self.task == "det" and self.labelled:
            boxes = rec.boxes if rec.boxes is not None else np.zeros((0, 5), np.float32)
        return build_sample(ir, vis, name=rec.name, index=index, task_size=self.task_size,
                            crop_size=self.crop_size, rng=rng, mask=mask, boxes=boxes,
                            views=self.views, with_chroma=self.with_chroma)

    def __getitem__(self, item) -> dict:
        index, epoch, seed = unpack_key(item)
        skipped: list[str] = []
        for attempt in range(min(len(self), MAX_CONSECUTIVE_FAILURES)):
            i = (index + attempt) % len(self)
            if i in self._bad:
                continue
            try:
                sample = self.load(i, sample_rng(seed, epoch, i))
            except ImageReadError:
                self._bad.add(i)
                skipped.append(self.records[i].name)
                continue
            sample["skipped"] = skipped
            return sample
        raise TDFusionError(f"{len(skipped)} consecutive samples from {self.records[index].name} on could not "
                            f"be read (first: {skipped[:3]})")
