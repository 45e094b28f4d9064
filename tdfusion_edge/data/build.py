"""build_dataset: a DatasetSpec and a split → a PairDataset (scanned) or SyntheticPairs."""
from __future__ import annotations

import logging
from pathlib import Path

from torch.utils.data import Dataset

from .sample import VIEWS
from .spec import DatasetSpec, load_dataset_yaml

log = logging.getLogger(__name__)

_UNSET = object()


def build_dataset(spec: DatasetSpec | str | Path, split: str = "train", *, views: tuple[str, ...] | None = None,
                  with_chroma: bool = False, task_size=_UNSET, crop_size: int | None = None) -> Dataset:
    """The dataset of ``split``; problems found by the scan are logged and kept in ``dataset.report``.

    ``views`` defaults to both views for ``train`` and the task view alone otherwise; ``task_size``
    defaults to the spec's (None keeps the native size).
    """
    if not isinstance(spec, DatasetSpec):
        spec = load_dataset_yaml(spec)
    views = tuple(views) if views is not None else (VIEWS if split == "train" else ("task",))
    size = spec.task_size if task_size is _UNSET else task_size
    crop = crop_size or spec.crop_size
    if spec.layout == "synthetic":
        from .synthetic_pairs import SyntheticPairs

        spec.split_sources(split)  # one-line error for a split the YAML does not define
        syn = spec.synthetic
        offset = {"train": 0, "val": 1_000_000, "test": 2_000_000}.get(split, 3_000_000)
        return SyntheticPairs(length=syn["lengths"][split], task=spec.task, height=syn["image_size"][0],
                              width=syn["image_size"][1], base_seed=syn["seed"] + offset,
                              condition=syn["condition"], task_size=size, crop_size=crop, views=views,
                              with_chroma=with_chroma, objects=syn["objects"])
    from .dataset import PairDataset
    from .scan import scan_split

    records, report = scan_split(spec, split)
    (log.info if report.ok else log.warning)("%s", report.summary())
    return PairDataset(records, task=spec.task, names=spec.names, task_size=size, crop_size=crop,
                       views=views, with_chroma=with_chroma, report=report)
