"""Datasets of paired infrared–visible images with segmentation or detection labels.

- ``load_dataset_yaml`` → ``DatasetSpec`` (layouts: msrs, fmb, m3fd, llvip, paired, synthetic; see
  ``layouts.LAYOUTS`` for the folders of each)
- ``build_dataset(spec, split)`` → ``PairDataset`` (scanned; problems in ``dataset.report``) or ``SyntheticPairs``
- ``make_loader(...)`` → ``PairLoader`` (resumable position) yielding batch dicts (see ``collate``)
- ``swap_pairs(batch)``: the released "swap" augmentation
"""
from .build import build_dataset
from .collate import collate_fn, det_targets, swap_pairs
from .dataset import PairDataset
from .layouts import LAYOUTS, Layout
from .loader import PairLoader, ResumableSampler, make_loader
from .report import ScanReport
from .scan import PairRecord, scan_split
from .spec import DatasetSpec, SplitSource, load_dataset_yaml, spec_from_dict
from .synthetic_pairs import SyntheticPairs

__all__ = [
    "DatasetSpec", "SplitSource", "load_dataset_yaml", "spec_from_dict", "LAYOUTS", "Layout",
    "ScanReport", "PairRecord", "scan_split", "PairDataset", "SyntheticPairs", "build_dataset",
    "collate_fn", "det_targets", "swap_pairs", "PairLoader", "ResumableSampler", "make_loader",
]
