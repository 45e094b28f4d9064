"""Stage overlap (apps.overlap): frames come out in order, each once, with at most three in flight;
the stages really run at the same time; and the live command line with --overlap writes the same
frames as without it, with the latency fields in its stats."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from tdfusion_edge.apps.overlap import OverlappedFrames, SequentialFrames
from tdfusion_edge.apps.pairing import END
from tdfusion_edge.apps.stats import StageTimer
from tdfusion_edge.apps.testmedia import synthetic_video_pair

from conftest import cli_env


class ListStream:
    """A pairing stream that hands out ``n`` numbered items, then END."""

    def __init__(self, n: int):
        self.items = list(range(n))

    def next(self, timeout=0.25):
        return self.items.pop(0) if self.items else END


class SleepyProcessor:
    """Fusion that takes ``ms`` per frame and counts how many frames it has started."""

    def __init__(self, ms: float = 0.0, fail_at: int | None = None):
        self.ms, self.fail_at = ms, fail_at
        self.started = 0
        self.lock = threading.Lock()

    def prepare(self, item, timer):
        with self.lock:
            self.started += 1
        if item == self.fail_at:
            raise RuntimeError("fusion failed")
        with timer.stage("fusion"):
            time.sleep(self.ms / 1000.0)
        return np.full((2, 2), item), {}


def _drain(frames, detect_ms: float, processor):
    got, in_flight = [], []
    while True:
        p = frames.next(timeout=5.0)
        if p is END:
            return got, in_flight
        assert p is not None, "the worker stalled"
        in_flight.append(processor.started - len(got))   # frames started but not yet handed on, incl. this one
        time.sleep(detect_ms / 1000.0)                   # "detection" of this frame
        got.append(p)


def test_overlap_keeps_order_loses_nothing_and_bounds_frames_in_flight():
    processor = SleepyProcessor(ms=2)
    timer = StageTimer()
    frames = OverlappedFrames(ListStream(40), processor, timer)
    got, in_flight = _drain(frames, detect_ms=6, processor=processor)
    frames.close()
    assert [int(p.out[0, 0]) for p in got] == list(range(40)) and [p.item for p in got] == list(range(40))
    # detection is slower than fusion, so the worker runs ahead as far as the queue lets it: this frame,
    # one waiting in the queue, one being fused (blocked on the full queue) — never more.
    assert max(in_flight) <= 3 and max(in_flight) >= 2
    assert timer.hist["fusion"].n == 40 and all("fusion" in p.stage_ms for p in got)


def test_stages_run_at_the_same_time():
    def wall(cls):
        processor = SleepyProcessor(ms=40)
        frames = cls(ListStream(10), processor, StageTimer())
        start = time.perf_counter()
        got, _ = _drain(frames, detect_ms=40, processor=processor)
        frames.close()
        assert len(got) == 10
        return time.perf_counter() - start

    sequential, overlapped = wall(SequentialFrames), wall(OverlappedFrames)
    assert sequential >= 0.8                       # 10 × (40 + 40) ms
    assert overlapped < 0.75 * sequential          # ≈ 11 × 40 ms when the two stages overlap


def test_worker_errors_reach_the_caller_and_close_is_prompt():
    frames = OverlappedFrames(ListStream(10), SleepyProcessor(fail_at=3), StageTimer())
    seen = []
    with pytest.raises(RuntimeError, match="fusion failed"):
        while True:
            p = frames.next(timeout=5.0)
            assert p is not None and p is not END
            seen.append(p.item)
    assert seen == [0, 1, 2] and frames.next() is END
    frames.close()
    stuck = OverlappedFrames(ListStream(100), SleepyProcessor(), StageTimer())   # worker blocked on a full queue
    time.sleep(0.05)
    start = time.perf_counter()
    stuck.close()
    assert time.perf_counter() - start < 2.0 and not stuck._thread.is_alive()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    import torch

    from tdfusion_edge.checkpoints import save_checkpoint
    from tdfusion_edge.models import FusionNet, FusionNetConfig

    root = tmp_path_factory.mktemp("overlap")
    torch.manual_seed(0)
    weights = save_checkpoint(FusionNet(FusionNetConfig(dim=8, num_blocks=1, heads=2)), root / "w.pt")
    ir, vis = synthetic_video_pair(root / "in", frames=12, size=(48, 64), fps=10, seed=4)
    return root, ir, vis, weights


def _live(root, ir, vis, weights, flag: str):
    out = root / flag.strip("-")
    cmd = [sys.executable, "-m", "tdfusion_edge.cli", "live", "--ir", str(ir), "--vis", str(vis), "--no-realtime",
           "--weights", str(weights), "--backend", "torch", "--device", "cpu", "--threads", "1",
           "--det", "yolov8n.yaml", "--det-imgsz", "64", "--det-conf", "1.0", "--no-hud", flag,
           "--frames-dir", str(out / "frames"), "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return out, run.stdout


def test_live_cli_with_overlap_writes_the_same_frames_in_order(clip):
    root, ir, vis, weights = clip
    on, text = _live(root, ir, vis, weights, "--overlap")
    off, _ = _live(root, ir, vis, weights, "--no-overlap")
    stats_on = json.loads((on / "stats.json").read_text())
    stats_off = json.loads((off / "stats.json").read_text())
    assert stats_on["overlap"] is True and stats_off["overlap"] is False
    assert stats_on["frames_out"] == stats_off["frames_out"] == 12 and stats_on["stopped_by"] == "end of input"
    for stage in ("preprocess", "fusion", "compose", "detect", "overlay", "sink", "total", "pipeline"):
        assert stats_on["latency_ms"][stage]["count"] == 12, stage
    assert stats_on["output_fps"] > 0 and "pair-to-output latency ms (stages overlapped)" in text
    records = [json.loads(line) for line in (on / "detections.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(12))
    assert [r["vis_seq"] for r in records] == sorted({r["vis_seq"] for r in records})   # increasing, no repeats
    assert "fusion" in records[0]["latency_ms"] and "detect" in records[0]["latency_ms"]
    # No boxes (confidence 1.0) and no HUD: the frames depend on fusion alone, so both runs are pixel-equal.
    frames_on, frames_off = sorted((on / "frames").iterdir()), sorted((off / "frames").iterdir())
    assert len(frames_on) == len(frames_off) == 12
    for a, b in zip(frames_on, frames_off):
        assert np.array_equal(cv2.imread(str(a)), cv2.imread(str(b))), a.name
