"""Soak and throughput run of the live app on recorded file sources (not a pytest test; run once).

    python benchmarks/soak_live.py --minutes 10 --det yolov8n.yaml --out runs/soak
    python benchmarks/soak_live.py --minutes 1 --source roadscene --out runs/fps   # FPS at 240×320

Makes two looping videos (the synthetic moving scene, or ../shared/data/roadscene pairs) at the
processing size, runs ``run_live`` on them for the given time with fusion (+ YOLOv8n), samples this
process's resident memory every few seconds, and writes ``soak.json`` (RSS after warm-up, its
drift to the end and the peak, frames, FPS, per-stage latency percentiles).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROADSCENE = REPO.parent / "shared" / "data" / "roadscene"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--size", default="240x320", help="processing size HxW (the videos are made at this size)")
    p.add_argument("--source", choices=("synthetic", "roadscene"), default="synthetic")
    p.add_argument("--weights", default=None, help="fusion checkpoint (default: the package's; else a random-init one)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--det", default="yolov8n.yaml", help="detector (yolov8n.yaml: untrained, same cost as trained)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=False,
                   help="replay at the videos' rate (default: as fast as possible, the heavier load)")
    p.add_argument("--warmup-s", type=float, default=60.0, help="memory reference taken this long after the start")
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--out", default="runs/soak")
    args = p.parse_args(argv)

    from tdfusion_edge.apps import LiveConfig, run_live
    from tdfusion_edge.apps.stats import rss_mb
    from tdfusion_edge.apps.testmedia import pairs_video_pair, synthetic_video_pair

    out = Path(args.out)
    h, w = (int(v) for v in args.size.lower().split("x"))
    if args.source == "roadscene":
        if not (ROADSCENE / "ir").is_dir():
            print(f"{ROADSCENE} not found", file=sys.stderr)
            return 2
        ir, vis = pairs_video_pair(ROADSCENE / "ir", ROADSCENE / "vi", out / "media", (h, w), fps=10)
    else:
        ir, vis = synthetic_video_pair(out / "media", frames=150, size=(h, w), fps=15, seed=7)
    weights = args.weights or _default_or_random_weights(out)

    samples: list[tuple[float, float]] = []
    done = threading.Event()
    t0 = time.monotonic()

    def sample():
        while not done.wait(args.sample_s):
            samples.append((round(time.monotonic() - t0, 1), round(rss_mb(), 1)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stats = run_live(LiveConfig(ir=str(ir), vis=str(vis), ir_options="loop=1", vis_options="loop=1", weights=weights,
                                backend=args.backend, det=args.det, size=(h, w), realtime=args.realtime,
                                duration=args.minutes * 60.0, threads=args.threads, hud=True,
                                jsonl=str(out / "detections.jsonl"), save=str(out / "soak.mp4"),
                                stats_path=str(out / "stats.json")))
    done.set()
    sampler.join()
    after = [s for s in samples if s[0] >= args.warmup_s] or samples
    ref = after[0][1]
    end = samples[-1][1] if samples else stats.rss_mb.get("end", 0.0)
    report = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "minutes": args.minutes, "size": [h, w], "source": args.source, "detector": args.det,
        "weights": str(weights), "realtime": args.realtime,
        "frames_out": stats.frames_out, "output_fps": stats.output_fps, "duration_s": stats.duration_s,
        "rss_mb_after_warmup": ref, "rss_mb_end": end, "rss_mb_max_after_warmup": max(s[1] for s in after),
        "rss_drift_pct": round(100.0 * (end - ref) / ref, 2) if ref else None,
        "rss_max_drift_pct": round(100.0 * (max(s[1] for s in after) - ref) / ref, 2) if ref else None,
        "latency_ms": stats.latency_ms, "samples": samples,
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    for line in stats.summary_lines():
        print(line)
    print(f"RSS after {args.warmup_s:.0f} s warm-up {ref:.1f} MiB, end {end:.1f} MiB "
          f"({report['rss_drift_pct']:+.2f} %), max {report['rss_mb_max_after_warmup']:.1f} MiB "
          f"({report['rss_max_drift_pct']:+.2f} %); details in {out / 'soak.json'}")
    return 0


def _default_or_random_weights(out: Path) -> str:
    from tdfusion_edge.checkpoints import default_weights_path, save_checkpoint
    path = default_weights_path()
    if path.is_file():
        return str(path)
    import torch

    from tdfusion_edge.models import FusionNet, FusionNetConfig
    torch.manual_seed(0)  # same cost as trained weights; the numbers are about speed and memory
    print("package weights missing: timing a random-init FusionNet", file=sys.stderr)
    return str(save_checkpoint(FusionNet(FusionNetConfig()), out / "random_fusion.pt"))


if __name__ == "__main__":
    sys.exit(main())
