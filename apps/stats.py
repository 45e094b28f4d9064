"""Run statistics: per-stage latency percentiles in constant memory, counters, resident memory."""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tdfusion_edge.validation.output_path import atomic_write_text

# Log-spaced histogram bins (2 % wide) from 1 µs to ~30 min: percentiles within 1 % of the truth,
# and memory that does not grow however long the app runs (a soak test checks exactly that).
_BIN_RATIO = 1.02
_MIN_MS = 1e-3
_NUM_BINS = int(math.log(1.8e6 / _MIN_MS) / math.log(_BIN_RATIO)) + 2


class LatencyHistogram:
    """Streaming distribution of durations in milliseconds."""

    def __init__(self) -> None:
        self.counts = np.zeros(_NUM_BINS, np.int64)
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, ms: float) -> None:
        """Record one duration."""
        ms = max(float(ms), 0.0)
        idx = 0 if ms <= _MIN_MS else min(_NUM_BINS - 1, 1 + int(math.log(ms / _MIN_MS) / math.log(_BIN_RATIO)))
        self.counts[idx] += 1
        self.n += 1
        self.total += ms
        self.max = max(self.max, ms)

    def percentile(self, pct: float) -> float:
        """Approximate percentile (geometric bin centre), 0 when empty."""
        if self.n == 0:
            return 0.0
        rank = pct / 100.0 * self.n
        idx = int(np.searchsorted(np.cumsum(self.counts), max(rank, 1), side="left"))
        if idx == 0:
            return _MIN_MS
        return min(self.max, _MIN_MS * _BIN_RATIO ** (idx - 0.5))

    def summary(self) -> dict[str, float]:
        """count, mean, p50, p90, p99 and max, in ms."""
        mean = self.total / self.n if self.n else 0.0
        return {"count": self.n, "mean": round(mean, 3), "p50": round(self.percentile(50), 3),
                "p90": round(self.percentile(90), 3), "p99": round(self.percentile(99), 3),
                "max": round(self.max, 3)}


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; psutil elsewhere; 0 when unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # psutil missing or unsupported platform: memory is then simply not reported
        return 0.0


@dataclass
class LiveStats:
    """What a live run reports at the end (also written as the stats JSON)."""

    frames_in: dict[str, int] = field(default_factory=dict)        # captured per source
    dropped_queue: dict[str, int] = field(default_factory=dict)    # overwritten in a full queue (newest wins)
    unmatched: dict[str, int] = field(default_factory=dict)        # no partner within the maximum skew
    reconnects: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)       # corrupt frames skipped (image-folder sources)
    resolution_changes: int = 0     # times the visible stream changed size (geometry re-derived each time)
    source_fps: dict[str, float] = field(default_factory=dict)     # measured capture rate
    pairs: int = 0
    stale_skipped: int = 0          # ready sets skipped to stay live when processing is slower than capture
    frames_out: int = 0
    paired_out: int = 0
    ir_only_out: int = 0
    vis_only_out: int = 0
    duration_s: float = 0.0
    cpu_s: float = 0.0              # process CPU time (all threads) during the run: the cost when cores are shared
    output_fps: float = 0.0         # after warm-up
    warmup_frames: int = 0
    skew_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    config: dict[str, object] = field(default_factory=dict)
    stopped_by: str = ""
    overlap: bool = False           # fusion of frame n+1 ran beside detection of frame n (apps.overlap)

    def to_dict(self) -> dict:
        return asdict(self)

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write the stats as indented JSON, creating the folder."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    def summary_lines(self) -> list[str]:
        """A few human-readable lines for the terminal."""
        lat = self.latency_ms
        stages = ", ".join(f"{k} {v['p50']:.1f}" for k, v in lat.items() if k not in ("total", "e2e", "pipeline"))
        lines = [
            f"frames out {self.frames_out} ({self.paired_out} paired, {self.ir_only_out} IR-only, "
            f"{self.vis_only_out} visible-only) in {self.duration_s:.1f} s; {self.output_fps:.2f} FPS after warm-up"
            + (f"; CPU {1000 * self.cpu_s / self.frames_out:.0f} ms per frame" if self.frames_out else ""),
            f"per-stage p50 ms: {stages}",
        ]
        if "total" in lat:
            lines.append(f"processing per frame ms: p50 {lat['total']['p50']:.1f}, p90 {lat['total']['p90']:.1f}, "
                         f"p99 {lat['total']['p99']:.1f}")
        if "pipeline" in lat:
            lines.append(f"pair-to-output latency ms{' (stages overlapped)' if self.overlap else ''}: "
                         f"p50 {lat['pipeline']['p50']:.1f}, p99 {lat['pipeline']['p99']:.1f}")
        if "e2e" in lat:
            lines.append(f"capture-to-output latency ms: p50 {lat['e2e']['p50']:.1f}, p99 {lat['e2e']['p99']:.1f}")
        lines.append("frames in " + _pairs(self.frames_in) + "; dropped (queue) " + _pairs(self.dropped_queue)
                     + "; unmatched " + _pairs(self.unmatched) + f"; stale skipped {self.stale_skipped}"
                     + "; reconnects " + _pairs(self.reconnects))
        if any(self.unreadable.values()) or self.resolution_changes:
            lines.append("unreadable frames skipped " + _pairs(self.unreadable)
                         + f"; visible resolution changes {self.resolution_changes}")
        if self.rss_mb:
            lines.append("resident memory MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in self.rss_mb.items()))
        return lines


def _pairs(d: dict) -> str:
    return "/".join(f"{k} {v}" for k, v in d.items()) or "-"


class StageTimer:
    """Times named stages of each frame into histograms: ``with timer.stage("fusion"): ...``."""

    def __init__(self) -> None:
        self.hist: dict[str, LatencyHistogram] = {}
        self.last: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, (time.perf_counter() - start) * 1000.0)

    def record(self, name: str, ms: float) -> None:
        """Add one duration to stage ``name`` (also kept as the latest value, for the HUD)."""
        self.hist.setdefault(name, LatencyHistogram()).add(ms)
        self.last[name] = ms

    def summaries(self) -> dict[str, dict[str, float]]:
        return {name: h.summary() for name, h in self.hist.items()}


class RateMeter:
    """Frames per second over a sliding window of the latest timestamps."""

    def __init__(self, window: int = 30) -> None:
        self.window = window
        self.times: list[float] = []

    def tick(self, t: float | None = None) -> None:
        self.times.append(time.monotonic() if t is None else t)
        if len(self.times) > self.window:
            del self.times[0]

    @property
    def fps(self) -> float:
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])
