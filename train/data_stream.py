"""Batches for the trainer: the dataset spec from ``--data``, loaders, a resumable stream of batches.

A ``BatchStream`` numbers its passes over the loader itself (each phase of an epoch starts a new
pass, as the released code restarts its loader; a phase longer than a pass wraps into the next),
so its position — (pass, samples delivered in it) — is all a checkpoint needs to continue with the
same batches and the same random crops.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from tdfusion_edge.data.collate import swap_pairs
from tdfusion_edge.data.loader import PairLoader, make_loader
from tdfusion_edge.data.spec import DatasetSpec, load_dataset_yaml, spec_from_dict
from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.validation.dataset_yaml import check_labels_present

from .config import TrainConfig

SYNTHETIC_DEFAULTS = {"train": 64, "val": 16, "image_size": [96, 128], "seed": 0, "condition": "random"}


def dataset_spec(cfg: TrainConfig) -> DatasetSpec:
    """``data: synthetic`` (options under ``synthetic``) or a dataset YAML path."""
    if cfg.data == "synthetic":
        values = {**SYNTHETIC_DEFAULTS, **(cfg.synthetic or {}), "layout": "synthetic", "task": cfg.task}
        spec = spec_from_dict(values, base_dir=Path.cwd(), where="config key synthetic")
    else:
        if Path(cfg.data).expanduser().is_dir():
            raise TDFusionError(f"--data {cfg.data} is a folder; training reads a dataset YAML (e.g. layout: paired, "
                                f"path: {cfg.data}, train: train, with labels in {{split}}/masks or {{split}}/labels)")
        spec = load_dataset_yaml(cfg.data, root=cfg.data_root)
    if spec.task != cfg.task:
        raise TDFusionError(f"dataset {cfg.data} is labelled for task {spec.task!r}, but --task is {cfg.task!r}")
    # the task network learns from labels: a split without any is refused before anything is built
    for split in ("train", eval_split(spec)):
        if split is not None:
            check_labels_present(spec, split)
    return spec


def eval_split(spec: DatasetSpec) -> str | None:
    """The split evaluated each epoch: 'val', else 'test', else none."""
    for name in ("val", "test"):
        if name in spec.splits:
            return name
    return None


def per_rank_pairs(cfg: TrainConfig, world_size: int) -> int:
    """Pairs each process loads per step: the global batch, less the swapped twins, split over processes."""
    pairs = cfg.batch_size // 2 if cfg.swap else cfg.batch_size
    if pairs % world_size:
        raise TDFusionError(f"batch_size {cfg.batch_size} ({pairs} pair(s) per step{' before swap' if cfg.swap else ''})"
                            f" does not split over {world_size} processes")
    return pairs // world_size


def train_loader(cfg: TrainConfig, spec: DatasetSpec, world_size: int) -> PairLoader:
    """The shuffled training loader of this process (both views: fusion crop and task view)."""
    kwargs: dict[str, Any] = {}
    if cfg.task_size is not None:
        kwargs["task_size"] = tuple(cfg.task_size)
    if cfg.crop_size is not None:
        kwargs["crop_size"] = cfg.crop_size
    loader = make_loader(spec, "train", batch_size=per_rank_pairs(cfg, world_size), shuffle=True,
                         num_workers=cfg.num_workers, seed=cfg.seed, **kwargs)
    return private_generator(loader, cfg.seed)


def private_generator(loader: PairLoader, seed: int) -> PairLoader:
    """Give the DataLoader its own generator: starting an iterator then never draws from torch's global
    RNG, so a resumed run (which starts its iterator mid-pass) keeps the global stream exact.
    Crops do not depend on it: they are seeded per (seed, pass, sample)."""
    loader.loader.generator = torch.Generator().manual_seed(seed)
    return loader


def eval_dataset(cfg: TrainConfig, spec: DatasetSpec, split: str):
    """The dataset evaluated each epoch: task view only, gray (the fused Y goes to T as in training)."""
    from tdfusion_edge.data.build import build_dataset

    kwargs: dict[str, Any] = {"views": ("task",)}
    if cfg.task_size is not None:
        kwargs["task_size"] = tuple(cfg.task_size)
    return build_dataset(spec, split, **kwargs)


def eval_loader(cfg: TrainConfig, spec: DatasetSpec, split: str, batch_size: int = 4) -> PairLoader:
    """The evaluation loader (fixed order, one process sees the whole split)."""
    from torch.utils.data import SequentialSampler

    dataset = eval_dataset(cfg, spec, split)
    # an explicit sampler: under DDP every rank would otherwise get a strided share of the split
    loader = make_loader(dataset, split, batch_size=batch_size, shuffle=False, num_workers=0,
                         sampler=SequentialSampler(dataset))
    return private_generator(loader, 0)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


class BatchStream:
    """Endless batches from a PairLoader, pass by pass, with a position that survives a restart."""

    def __init__(self, loader: PairLoader, swap: bool, device: torch.device):
        self.loader, self.swap, self.device = loader, swap, device
        self.pass_index = -1
        self._it: Iterator[dict] | None = None

    def start_pass(self) -> None:
        """Begin a fresh (newly shuffled) pass."""
        self.pass_index += 1
        self.loader.set_epoch(self.pass_index)
        self._it = iter(self.loader)

    def next(self) -> dict:
        """The next batch (swap-augmented and on the device); wraps into a new pass when one ends."""
        if self._it is None:
            self.start_pass()
        try:
            batch = next(self._it)
        except StopIteration:
            self.start_pass()
            batch = next(self._it)
        if self.swap:
            batch = swap_pairs(batch)
        return to_device(batch, self.device)

    def state_dict(self) -> dict:
        """(pass, samples delivered in it on this process)."""
        return {"pass": self.pass_index, "loader": self.loader.state_dict() if self._it is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off (same pass, same next batch)."""
        self.pass_index = int(state["pass"])
        loader_state = state.get("loader")
        if loader_state is not None and not self.loader.pass_finished(loader_state):
            self.loader.load_state_dict(loader_state)
            self._it = iter(self.loader)
        else:
            # saved before any pass, or when one had just run out: the next batch starts the next pass,
            # numbered by this stream as in the uninterrupted run (not by the loader's own epoch count)
            self._it = None
