"""``tdfusion-edge demo``: the first thing to run — synthetic pairs fused, evaluated and shown."""
from __future__ import annotations

import time
from pathlib import Path

from tdfusion_edge.imaging import LoadedPair, luma_and_chroma, merge_chroma, write_image

from tdfusion_edge.validation.numbers import int_in

from .common import add_command, add_run_dir_options, run_dir

MAX_PAIRS = 200
MAX_SIDE = 2048  # synthetic scenes are rendered on the CPU


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "demo", "fuse, evaluate and show built-in synthetic IR/visible scenes",
                    "tdfusion-edge demo --pairs 6")
    add_run_dir_options(p, "demo")
    p.add_argument("--pairs", type=int_in(1, MAX_PAIRS), default=6,
                   help=f"number of synthetic scenes, 1-{MAX_PAIRS} (half day, half night)")
    p.add_argument("--size", type=int_in(16, MAX_SIDE), nargs=2, default=(240, 320), metavar=("H", "W"),
                   help=f"scene height and width, 16-{MAX_SIDE} each (default 240 320)")
    p.add_argument("--weights", default=None, help="fusion checkpoint; default: the built-in weights")
    p.add_argument("--backend", default="auto", help="inference backend (auto, torch, onnxruntime, tensorrt)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument("--live-frames", type=int_in(0, 10000), default=24,
                   help="frames of the live pipeline on synthetic camera streams (0: skip that step)")
    p.add_argument("--det", default="none",
                   help="detector for the live step: none, yolov8n.yaml (untrained), a local .pt (never downloaded), "
                        "a converted detector (convert-det), .onnx/.engine, or the built-in msrs")
    p.set_defaults(func=run)


def make_demo_pairs(out: Path, count: int, size: tuple[int, int], seed: int):
    """Write ``count`` synthetic pairs to out/inputs/{ir,vis} and return them as (stem, LoadedPair, scene)."""
    from tdfusion_edge.data.synthetic import make_scene

    pairs = []
    for i in range(count):
        condition = "night" if i % 2 else "day"
        scene = make_scene(seed + i, size[0], size[1], condition)
        stem = f"scene_{i:02d}_{condition}"
        write_image(out / "inputs" / "ir" / f"{stem}.png", scene.ir)
        write_image(out / "inputs" / "vis" / f"{stem}.png", scene.vis)
        ir_y, _ = luma_and_chroma(scene.ir)
        vis_y, vis_c = luma_and_chroma(scene.vis)
        pairs.append((stem, LoadedPair(ir_y, vis_y, merge_chroma(None, vis_c), False), scene))
    return pairs


def run(args) -> int:
    from tdfusion_edge.export.backends import create_backend
    from tdfusion_edge.inference import fuse_pair
    from tdfusion_edge.montage import montage
    from tdfusion_edge.metrics import compute_metrics, load_gray_for_metrics
    from tdfusion_edge.metrics.table import format_table, mean_row, write_csv
    from tdfusion_edge.validation.detector import check_detector_spec

    if args.live_frames > 0:
        check_detector_spec(args.det)  # before anything is written: a missing yolov8n.pt fails here, not at step 5
    start = time.perf_counter()
    out = run_dir(args.out, "demo", args.exist_ok)
    print(f"1/5 making {args.pairs} synthetic IR/visible scenes ({args.size[0]}x{args.size[1]})")
    pairs = make_demo_pairs(out, args.pairs, tuple(args.size), args.seed)
    backend = create_backend(args.backend, weights=args.weights, device=args.device)
    print(f"2/5 fusing with the {backend.name} backend")
    rows, tiles = [], []
    try:
        for stem, pair, scene in pairs:
            fused = fuse_pair(backend, pair)
            write_image(out / "fused" / f"{stem}.png", fused.gray)
            if fused.color is not None:
                write_image(out / "fused" / "color" / f"{stem}.png", fused.color)
            tiles.append([("infrared", scene.ir), ("visible", scene.vis), ("fused", fused.color
                          if fused.color is not None else fused.gray)])
            rows.append((stem, fused.gray, scene))
    finally:
        backend.close()
    print("3/5 evaluating (tdfusion convention)")
    table = {}
    for stem, _, _ in rows:
        # Read back the written files the way the published evaluators do (8-bit, BGR→GRAY, rounded).
        triple = [load_gray_for_metrics(out / sub / f"{stem}.png") for sub in ("fused", "inputs/ir", "inputs/vis")]
        table[stem] = compute_metrics(*triple)
    names = list(next(iter(table.values())))
    text = format_table(table, names, mean=mean_row(table, names), title="fusion metrics (tdfusion convention)",
                        digits=3)
    (out / "metrics.txt").write_text(text + "\n")
    write_csv(out / "metrics.csv", {"tdfusion": table}, names)
    print(text)
    print("4/5 writing the montage")
    write_image(out / "montage.png", montage(tiles))
    if args.live_frames > 0:
        run_live_step(out / "live", args)
    print(f"demo finished in {time.perf_counter() - start:.1f} s; everything is in {out.resolve()}")
    print(f"look at {out / 'montage.png'} (infrared | visible | fused) and {out / 'metrics.txt'}")
    if args.live_frames > 0:
        print(f"    and {out / 'live' / 'live.mp4'} (the live pipeline on two synthetic camera streams)")
    return 0


def run_live_step(out: Path, args) -> None:
    """The live app on two synthetic camera streams (IR at 9 fps, visible at 30 fps), headless."""
    from tdfusion_edge.apps import LiveConfig, run_live

    print(f"5/5 live pipeline: {args.live_frames} frames of paired synthetic camera streams "
          f"(IR 9 fps, visible 30 fps) -> fusion -> detection ({args.det}) -> video")
    scene = f"scene={args.size[0]}x{args.size[1]}"
    config = LiveConfig(ir="synthetic", vis="synthetic", ir_options=f"fps=9,{scene}",
                        vis_options=f"fps=30,{scene}", weights=args.weights, backend=args.backend,
                        device=args.device, det=args.det, max_frames=args.live_frames, output_dir=str(out),
                        warmup_frames=min(5, args.live_frames))
    stats = run_live(config)
    for line in stats.summary_lines():
        print(f"  {line}")
