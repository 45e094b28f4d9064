"""``--backend auto`` by measurement: build every usable backend, drop those that fail their gate, time
the rest on the real input shape, keep the fastest; the decision is cached per model + shape + machine.

Gates: a backend carrying a ``gate_report`` (INT8) must have passed it on real held-out pairs; every
candidate must also match the reference (the first candidate that ran, FP32) on a probe pair within
its precision's bound, so a broken or drifting backend is never chosen however fast it is.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .engine_cache import cache_root, slug
from .errors import BackendUnavailable, ExportError
from .quality_gate import QualityReport, measure_quality

log = logging.getLogger(__name__)

# Probe bounds per precision against the FP32 reference (raw output, [0,1]).
PROBE_BOUNDS = {"fp32": (60.0, 1e-3), "fp16": (35.0, 0.05), "int8": (30.0, 0.25)}
DECISION_VERSION = "auto-v1"


@dataclass
class Measured:
    """One candidate's outcome: median ms of the timed runs, or why it was left out."""

    kind: str
    ms: float | None = None
    runs: list[float] | None = None
    reason: str | None = None
    describe: str = ""


def machine_id(threads: int | None = None) -> str:
    """CPU model, logical CPUs, threads, GPU and runtime versions: a decision holds only where it was measured."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "nogpu"
    try:
        import onnxruntime
        ort = onnxruntime.__version__
    except ImportError:
        ort = "none"
    return slug(f"{cpu}-{os.cpu_count()}cpu-t{threads or torch.get_num_threads()}-{gpu}-torch{torch.__version__}-ort{ort}")


def probe_pair(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth, image-like synthetic pair (blurred noise + gradients) at ``shape``; no data needed."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = shape
    out = []
    for k in range(2):
        noise = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), max(1.0, min(h, w) / 24))
        ramp = np.linspace(0, 1, w, dtype=np.float32)[None] * (0.5 if k else 0.3)
        img = noise + ramp
        out.append(((img - img.min()) / max(float(np.ptp(img)), 1e-6)).astype(np.float32))
    return out[0], out[1]


def _time(fn: Callable, ir: np.ndarray, vis: np.ndarray, runs: int, give_up_ms: float | None) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(ir, vis)
        times.append((time.perf_counter() - start) * 1000.0)
        if give_up_ms is not None and times[-1] > 2.0 * give_up_ms:
            break                              # clearly slower than the best so far: no need to be precise
    return times


def select_fastest(candidates: Sequence[tuple[str, Callable[[], object]]], shape: tuple[int, int],
                   warmup: int = 1, runs: int = 3, cache_file: Path | None = None):
    """Build, gate and time ``candidates`` (kind, builder) in order; return (backend, measurements).

    The first candidate that builds is the reference of the probe gate (list an FP32 one first).
    Builders raising ``BackendUnavailable`` or ``ExportError`` (an INT8 gate refusal) are left out
    with their reason. Losers are closed.
    """
    ir, vis = probe_pair(shape)
    reference = None
    kept: list[tuple[object, Measured]] = []
    results: list[Measured] = []
    for kind, build in candidates:
        try:
            backend = build()
        except (BackendUnavailable, ExportError) as exc:
            results.append(Measured(kind, reason=str(exc)))
            continue
        m = Measured(kind, describe=backend.describe())
        results.append(m)
        out = backend.fuse(ir, vis)
        if reference is None:
            reference = out
        bound = PROBE_BOUNDS.get(getattr(backend, "precision", "fp32"), PROBE_BOUNDS["fp32"])
        probe = measure_quality([reference], [out], bound[0], bound[1], label=f"{kind} vs reference")
        gate: QualityReport | None = getattr(backend, "gate_report", None)
        failed = next((r for r in (gate, probe) if r is not None and not r.passed), None)
        if failed is not None:
            m.reason = f"failed its gate: {failed.describe()}"
            backend.close()
            continue
        for _ in range(max(0, warmup - 1)):    # the probe run above was the first warm-up
            backend.fuse(ir, vis)
        best = min((k[1].ms for k in kept), default=None)
        m.runs = _time(backend.fuse, ir, vis, runs, best)
        m.ms = statistics.median(m.runs)
        kept.append((backend, m))
    if not kept:
        raise BackendUnavailable("no usable backend: " + "; ".join(f"{r.kind}: {r.reason}" for r in results))
    winner, wm = min(kept, key=lambda k: k[1].ms)
    for backend, _ in kept:
        if backend is not winner:
            backend.close()
    log.info("auto backend at %dx%d: %s (%s)", shape[0], shape[1], wm.describe, summary(results))
    if cache_file is not None:
        write_decision(cache_file, wm.kind, shape, results)
    return winner, results


def summary(results: Sequence[Measured]) -> str:
    """'onnxruntime 120 ms, torch 300 ms, onnxruntime-int8 left out (...)' for logs."""
    parts = []
    for r in results:
        parts.append(f"{r.kind} {r.ms:.1f} ms" if r.ms is not None else f"{r.kind} left out ({r.reason})")
    return "; ".join(parts)


def decision_path(model_id: str, shape: tuple[int, int], machine: str, cache_dir=None, extra: str = "") -> Path:
    """Where the decision for (model, shape, machine, candidate set) is cached."""
    name = f"{DECISION_VERSION}-{model_id[:16]}-{shape[0]}x{shape[1]}-{slug(extra) or 'default'}-{machine[:80]}.json"
    return cache_root(cache_dir) / "auto" / name


def write_decision(path: Path, kind: str, shape: tuple[int, int], results: Sequence[Measured]) -> None:
    """Record the choice with the numbers it was made on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"choice": kind, "shape": list(shape),
                                "measured": [vars(r) for r in results]}, indent=2) + "\n")


def read_decision(path: Path) -> dict | None:
    """The cached decision, or None when absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
