"""Stage overlap for the live app: frame n+1 is pre-processed, fused and composed on a worker thread
while frame n is detected, drawn and written on the main thread.

Between the two stages is a queue of depth 1, so at most three frames are in flight (one being
detected, one waiting, one being fused): latency stays bounded and, when the app is slower than
the cameras, frames are dropped at the sources (newest wins) rather than queued. One worker and a
FIFO queue keep frames in order, each exactly once. Both ONNX Runtime and PyTorch release the GIL
in their kernels, so fusion and detection really run at the same time on two cores.

``open_frames(...)`` gives the pipeline a ``next(timeout)`` that returns a ``Prepared`` frame, None
(nothing yet) or ``END``, with or without overlap.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from .pairing import END
from .stats import StageTimer

log = logging.getLogger(__name__)

PREPARE_STAGES = ("preprocess", "fusion", "compose")


@dataclass
class Prepared:
    """A frame set after pre-processing, fusion and compose; ``taken`` is when it left the pairing stage."""

    item: object
    out: np.ndarray
    planes: dict
    taken: float                      # time.perf_counter()
    stage_ms: dict[str, float]


class _FrameTimer(StageTimer):
    """A StageTimer that also keeps the current frame's stage times (the HUD and per-frame records need
    the times of the frame being shown, not of the one the worker is fusing)."""

    def __init__(self) -> None:
        super().__init__()
        self.frame: dict[str, float] = {}

    def record(self, name: str, ms: float) -> None:
        super().record(name, ms)
        self.frame[name] = ms


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _prepare(processor, item, timer: _FrameTimer) -> Prepared:
    timer.frame = {}
    taken = time.perf_counter()
    out, planes = processor.prepare(item, timer)
    return Prepared(item, out, planes, taken, dict(timer.frame))


class SequentialFrames:
    """No overlap: each pair is prepared on the calling thread when it is asked for."""

    overlapped = False

    def __init__(self, stream, processor, timer: StageTimer):
        self.stream, self.processor = stream, processor
        self.timer = _FrameTimer()
        self.timer.hist = timer.hist            # the run's histograms; frame times kept separately

    def next(self, timeout: float = 0.25):
        """The next prepared frame, None when none arrived within ``timeout``, or END."""
        item = self.stream.next(timeout=timeout)
        if item is END or item is None:
            return item
        return _prepare(self.processor, item, self.timer)

    def close(self) -> None:
        """Nothing runs in the background."""


class OverlappedFrames:
    """A worker thread prepares frames one ahead of the caller, through a queue of ``depth`` (default 1)."""

    overlapped = True

    def __init__(self, stream, processor, timer: StageTimer, depth: int = 1):
        if depth < 1:
            raise ValueError("the overlap queue needs a depth of at least 1")
        self.stream, self.processor, self.main_timer = stream, processor, timer
        self.timer = _FrameTimer()              # the worker's own: merged into the run's at close()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._work, name="tdfusion-fusion-stage", daemon=True)
        self._thread.start()

    def _put(self, value) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                item = self.stream.next(timeout=0.1)
                if item is None:
                    continue
                if item is END:
                    self._put(END)
                    return
                if not self._put(_prepare(self.processor, item, self.timer)):
                    return
        except BaseException as exc:  # handed to the main thread, which raises it there
            self._put(_Failure(exc))

    def next(self, timeout: float = 0.25):
        """The next prepared frame (in capture order), None when none is ready within ``timeout``, or END."""
        if self._done:
            return END
        try:
            value = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(value, _Failure):
            self._done = True
            raise value.exc
        if value is END:
            self._done = True
        return value

    def close(self) -> None:
        """Stop the worker (a frame it is fusing is finished and discarded) and merge its stage times."""
        self._stop.set()
        while True:                             # unblock a worker waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30.0)
        if self._thread.is_alive():
            log.warning("the fusion stage did not stop within 30 s")
        for name, hist in self.timer.hist.items():
            self.main_timer.hist[name] = hist


def overlap_enabled(requested: bool | None, processor) -> bool:
    """``--overlap``/``--no-overlap`` as given; by default on when a detector runs and pre-processing is
    on the CPU (a CUDA context is bound to the thread that made it, and without a detector there is
    nothing to overlap fusion with)."""
    if requested is not None:
        return bool(requested)
    return getattr(processor.detector, "name", "none") != "none" and getattr(processor.pre, "name", "") == "numpy"


def open_frames(stream, processor, timer: StageTimer, overlap: bool | None = None):
    """SequentialFrames or OverlappedFrames for this run (see ``overlap_enabled``)."""
    if overlap_enabled(overlap, processor):
        log.info("stage overlap on: fusing frame n+1 while detecting frame n (queue depth 1)")
        return OverlappedFrames(stream, processor, timer)
    return SequentialFrames(stream, processor, timer)
