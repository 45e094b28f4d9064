"""Loader with a resumable position: ResumableSampler (DistributedSampler semantics) + PairLoader.

Position = (epoch, samples delivered in that epoch on this rank). ``PairLoader.state_dict()`` saved with a
checkpoint and ``load_state_dict()`` before the next ``iter()`` continue the same pass with the same
order and the same random crops (each sample's crop stream is seeded by (seed, epoch, index)).
A batch counts as delivered once the loop body receives it: save the state after the step that used it.
Every ``iter()`` begins a new pass (epoch + 1) unless ``set_epoch`` or ``load_state_dict`` chose one,
so a loop broken early (the released G phase stops after 2M batches) does not resume on the next ``iter()``.
"""
from __future__ import annotations

import itertools
import logging
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tdfusion_edge.errors import TDFusionError

from .collate import collate_fn

log = logging.getLogger(__name__)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableSampler(Sampler):
    """Shuffled (or ordered) indices for one rank, yielded as (index, epoch, seed) keys.

    The order of an epoch matches ``DistributedSampler`` (``randperm`` seeded with seed + epoch, padded
    to a multiple of the world size, rank-strided). Each ``iter()`` starts the next epoch unless
    ``set_epoch`` chose one; ``load_state_dict`` makes the next ``iter()`` resume a pass part-way.
    ``base`` wraps another index sampler (its order is used, the resume logic is added).
    """

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = False, base: Sampler | None = None):
        r, w = _dist_rank_world()
        self.length, self.shuffle, self.seed, self.drop_last, self.base = length, shuffle, seed, drop_last, base
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        self.epoch, self.consumed = 0, 0
        self._next_epoch, self._skip = 0, 0

    def __len__(self) -> int:
        if self.base is not None:
            return len(self.base)
        if self.drop_last:
            return self.length // self.world_size
        return -(-self.length // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next pass (DistributedSampler semantics).

        The epoch a ``load_state_dict`` resumes keeps its skip; any other epoch starts from its first sample.
        """
        if int(epoch) != self._next_epoch:
            self._skip = 0  # a skip pending from a resume belongs to the resumed pass only
        self._next_epoch = int(epoch)
        if self.base is not None and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def order(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch``, in order."""
        if self.base is not None:
            return [int(i) for i in self.base]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            idx = torch.randperm(self.length, generator=g).tolist()
        else:
            idx = list(range(self.length))
        n = len(self) * self.world_size
        if n > len(idx):
            idx += (idx * (n // len(idx) + 1))[: n - len(idx)]
        return idx[:n][self.rank:n:self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        # eager bookkeeping (not a generator body): DataLoader creates the iterator before it pulls
        self.epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        skip, self._skip = self._skip, 0
        self.consumed = skip
        epoch, seed = self.epoch, self.seed
        return ((i, epoch, seed) for i in itertools.islice(self.order(epoch), skip, None))

    def state_dict(self) -> dict:
        """Position of the current pass: epoch and samples delivered (as counted by PairLoader)."""
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Make the next ``iter()`` resume epoch ``state['epoch']`` after ``state['consumed']`` samples."""
        if state.get("world_size", self.world_size) != self.world_size:
            log.warning("resuming a loader saved with world size %s on world size %s: order differs",
                        state.get("world_size"), self.world_size)
        self.seed = int(state.get("seed", self.seed))
        self._next_epoch, self._skip = int(state["epoch"]), int(state["consumed"])
        if self._skip >= len(self):  # saved at the end of a pass: resume with the next one
            self._next_epoch, self._skip = self._next_epoch + 1, 0
        self.epoch, self.consumed = self._next_epoch, self._skip


@contextmanager
def opencv_single_threaded() -> Iterator[None]:
    """OpenCV at one thread for the duration (the previous count is put back after).

    Around a fork: a child that re-configures a thread pool inherited with idle (blocked) workers
    deadlocks in ``pthread_cond_destroy``, so the pool is shrunk in the parent, where its threads exist.
    """
    before = cv2.getNumThreads()
    if before == 1:
        yield
        return
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _worker_init(_: int) -> None:
    # two workers on two cores: no nested thread pools inside each worker. A forked worker inherits one
    # OpenCV thread from ForkSafeDataLoader and must not touch the pool (see opencv_single_threaded);
    # only a fresh process (spawn / forkserver) still has a pool to set, and there it is safe.
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    torch.set_num_threads(1)
    # Ctrl-C (and a SIGTERM to the process group) reach the workers too: the parent finishes its step and
    # writes its final checkpoint first, then shuts them down (they also exit when it dies)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ForkSafeDataLoader(DataLoader):
    """A DataLoader whose worker processes start while the parent's OpenCV runs single-threaded."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        # workers fork inside this call (first pass, or every pass without persistent workers)
        with opencv_single_threaded():
            return super().__iter__()


class PairLoader:
    """Iterable of batch dicts over a dataset, with a resumable position and load-time skip accounting."""

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, loader: DataLoader):
        self.dataset, self.sampler, self.loader = dataset, sampler, loader
        self.report = getattr(dataset, "report", None)
        self._skipped: set[str] = set()

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            self.sampler.consumed += len(batch["name"])
            new = set(batch.get("skipped", ())) - self._skipped
            if new:
                self._skipped |= new
                if self.report is not None:
                    for n in sorted(new):
                        self.report.add("skipped_at_load", n, "unreadable while loading")
                log.warning("skipped unreadable sample(s) while loading: %s", ", ".join(sorted(new)))
            yield batch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next pass."""
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Position to save with a checkpoint."""
        return self.sampler.state_dict()

    def samples_per_pass(self) -> int:
        """Samples one pass delivers on this rank (a dropped last batch excluded)."""
        return len(self.loader) * self.batch_size if self.loader.drop_last else len(self.sampler)

    def pass_finished(self, state: dict) -> bool:
        """Whether a saved position lies at the end of its pass (nothing of it is left to deliver)."""
        return int(state["consumed"]) >= self.samples_per_pass()

    def load_state_dict(self, state: dict) -> None:
        """Resume from a saved position at the next ``iter()``."""
        if self.pass_finished(state):  # nothing left of that pass (a dropped tail included)
            state = {**state, "epoch": int(state["epoch"]) + 1, "consumed": 0}
        self.sampler.load_state_dict(state)


def make_loader(spec_or_dataset, split: str = "train", batch_size: int = 2, shuffle: bool = True,
                num_workers: int = 2, seed: int = 0, drop_last: bool = False, sampler: Sampler | None = None,
                **dataset_kwargs) -> PairLoader:
    """A PairLoader over a Dataset, a DatasetSpec or a dataset YAML path (built for ``split``).

    Workers are persistent, pin memory when CUDA is available, and run single-threaded OpenCV/torch.
    ``sampler`` may be any index sampler (e.g. a DistributedSampler); its order is wrapped for resume.
    ``dataset_kwargs`` go to ``build_dataset`` (views, with_chroma, task_size, ...).
    """
    from .build import build_dataset
    from .spec import DatasetSpec, load_dataset_yaml

    if isinstance(spec_or_dataset, (str, Path)):
        spec_or_dataset = load_dataset_yaml(spec_or_dataset)
    if isinstance(spec_or_dataset, DatasetSpec):
        dataset = build_dataset(spec_or_dataset, split, **dataset_kwargs)
    elif isinstance(spec_or_dataset, Dataset):
        if dataset_kwargs:
            raise TDFusionError(f"dataset options {sorted(dataset_kwargs)} need a DatasetSpec, not a Dataset")
        dataset = spec_or_dataset
    else:
        raise TDFusionError(f"make_loader needs a Dataset, DatasetSpec or YAML path, got {type(spec_or_dataset)}")
    if len(dataset) == 0:
        raise TDFusionError("the dataset is empty")
    rs = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed, drop_last=False, base=sampler)
    workers = max(int(num_workers), 0)
    loader = ForkSafeDataLoader(dataset, batch_size=batch_size, sampler=rs, num_workers=workers,
                                collate_fn=collate_fn, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                                persistent_workers=workers > 0, worker_init_fn=_worker_init if workers else None,
                                prefetch_factor=2 if workers else None)
    return PairLoader(dataset, rs, loader)
