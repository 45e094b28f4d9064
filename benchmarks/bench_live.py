"""The live app end to end on the real M3SVD clips: fusion + YOLOv8n, FPS after warm-up, per-stage p50/p99.

Run: ``pytest benchmarks/bench_live.py -s --benchmark-columns=min,median,rounds``
(``BENCH_LIVE_FRAMES`` frames per run, default 120; ``BENCH_LIVE_CLIP`` default 0113_1714;
``BENCH_LIVE_WEIGHTS`` default ``lite,default``; ``BENCH_LIVE_SIZES`` default ``240x320,480x640``;
``BENCH_THREADS`` default 2). Skips without ``../shared/data/m3svd``.

Each benchmark round is one ``run_live`` over the first N frame pairs of the clip with
``realtime=False`` (every frame processed, as ``tdfusion-edge live --no-realtime``), the untrained
``yolov8n.yaml`` detector (same network and cost as ``yolov8n.pt``, no download) and the auto fusion
backend. The built-in full FusionNet (``default``) is the baseline of the same run. At the end a
table of FPS after warm-up and per-stage p50/p99 is printed, with the machine's load average.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

M3SVD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "m3svd"
CLIP = os.environ.get("BENCH_LIVE_CLIP", "0113_1714")
FRAMES = int(os.environ.get("BENCH_LIVE_FRAMES", "120"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
WEIGHTS = [w for w in os.environ.get("BENCH_LIVE_WEIGHTS", "lite,default").split(",") if w]
SIZES = [s for s in os.environ.get("BENCH_LIVE_SIZES", "240x320,480x640").split(",") if s]
RESULTS: dict[tuple[str, str], dict] = {}

pytestmark = pytest.mark.skipif(not (M3SVD / "ir" / f"{CLIP}.mp4").is_file(),
                                reason=f"needs ../shared/data/m3svd/ir/{CLIP}.mp4")


def live_once(weights: str, size: str, frames: int = FRAMES, threads: int = THREADS):
    """One end-to-end live run on the clip pair; returns its LiveStats."""
    from tdfusion_edge.apps import LiveConfig, run_live

    h, w = (int(v) for v in size.split("x"))
    cfg = LiveConfig(ir=str(M3SVD / "ir" / f"{CLIP}.mp4"), vis=str(M3SVD / "vi" / f"{CLIP}.mp4"),
                     weights=weights, backend="auto", device="cpu", det="yolov8n.yaml", size=(h, w),
                     realtime=False, max_frames=frames, hud=True, threads=threads)
    return run_live(cfg)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if not RESULTS:
        return
    load = os.getloadavg()
    print(f"\nlive end to end, M3SVD {CLIP}, {FRAMES} frames, {THREADS} threads, YOLOv8n; "
          f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} CPUs")
    print("| weights | size | FPS after warm-up | fusion p50 / p99 ms | detection p50 / p99 ms | total p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for (weights, size), r in RESULTS.items():
        lat = r["latency_ms"]

        def cell(stage):
            s = lat.get(stage)
            return "—" if not s else f"{s['p50']:.1f} / {s['p99']:.1f}"
        print(f"| {weights} | {size} | {r['output_fps']:.2f} | {cell('fusion')} | {cell('detect')} | "
              f"{cell('total')} |")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_live_end_to_end(benchmark, weights, size):
    benchmark.group = f"live {size}"
    benchmark.extra_info.update(weights=weights, size=size, frames=FRAMES, threads=THREADS)
    stats = benchmark.pedantic(live_once, args=(weights, size), rounds=1, iterations=1, warmup_rounds=0)
    assert stats.frames_out == FRAMES and stats.output_fps > 0
    RESULTS[(weights, size)] = {"output_fps": stats.output_fps, "latency_ms": stats.latency_ms}
    benchmark.extra_info.update(output_fps=stats.output_fps, latency_ms=stats.latency_ms)
