"""``tdfusion-edge live``: two camera streams → registration → fusion → YOLOv8 → screen, file or stream."""
from __future__ import annotations

import argparse
import json
import signal
import logging
from pathlib import Path

from tdfusion_edge.validation.numbers import (float_in, hw_size, int_in, parse_hw as parse_size, port, positive_float,
                                              positive_int)

from .common import add_command, run_dir

log = logging.getLogger("tdfusion_edge.live")

MAX_SIDE = 4096  # processing and detector sizes (4K frames fit)

EXAMPLE = ("tdfusion-edge live --ir /dev/video1 --vis /dev/video0 --homography H.yaml --det yolov8n.pt "
           "--serve 8080 --save out.mp4")


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "live", "fuse and detect on two live (or recorded) IR/visible streams", EXAMPLE)
    src = p.add_argument_group("sources (index, /dev/videoN, GStreamer pipeline, URL, video file, image folder, "
                               "'synthetic'; see docs/live.md)")
    src.add_argument("--ir", required=True, help="infrared source")
    src.add_argument("--vis", required=True, help="visible source")
    src.add_argument("--ir-opts", default=None, metavar="K=V,..",
                     help="IR source options, e.g. 'width=640,height=512,fps=30,fourcc=Y16,raw=1' or 'loop=1'")
    src.add_argument("--vis-opts", default=None, metavar="K=V,..", help="visible source options")
    src.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                     help="replay files/folders at their own rate, dropping what processing cannot keep up with "
                          "(default); --no-realtime processes every frame as fast as possible")
    src.add_argument("--max-skew-ms", type=positive_float, default=40.0,
                     help="largest IR/visible time difference of a pair")
    src.add_argument("--stall-timeout", type=positive_float, default=None,
                     help="seconds without frames before a live source counts as lost (default: max(1 s, 3 frames))")

    proc = p.add_argument_group("processing")
    proc.add_argument("--homography", default=None, help="IR→visible homography (YAML/JSON from `tdfusion-edge calibrate`)")
    proc.add_argument("--weights", default=None,
                      help="fusion checkpoint (released layout or ours), or a built-in name: default, "
                           "lite (TDFusion-lite, ~30x cheaper), tdfusion-msrs (task-driven on MSRS detection); default: the "
                           "built-in weights")
    proc.add_argument("--backend", default="auto",
                      help="fusion backend: auto (with --size: the fastest that passes its gate, measured), "
                           "torch, onnxruntime, onnxruntime-int8, tensorrt")
    proc.add_argument("--calib", default=None, metavar="DIR",
                      help="real IR/visible pairs (ir/ + vi/ images or clips) to calibrate INT8 on; "
                           "once per network and size (cached)")
    proc.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                      help="detect frame n while fusing frame n+1 (queue depth 1); default: on when a detector "
                           "runs with CPU pre-processing")
    proc.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    proc.add_argument("--half", action="store_true", help="FP16 on GPU backends")
    proc.add_argument("--det", default="none",
                      help="detector: none (fusion only), yolov8n.yaml (untrained), a local .pt (never downloaded), "
                           "a converted detector (convert-det), an .onnx/.engine path, or the built-in msrs (YOLOv8n for person, "
                           "bicycle, car, trained here on tdfusion-msrs images)")
    proc.add_argument("--det-conf", type=float_in(0.0, 1.0), default=0.25, help="detection confidence threshold")
    proc.add_argument("--det-imgsz", type=int_in(32, MAX_SIDE), default=None,
                      help="detector input size (must match a static engine)")
    proc.add_argument("--det-precision", choices=("fp32", "int8"), default="fp32",
                      help="fp32: the detector in PyTorch (default); int8: a static INT8 ONNX on onnxruntime (CPU), "
                           "calibrated once on --calib DIR and gated against FP32 (needs --size)")
    proc.add_argument("--size", type=hw_size(16, MAX_SIDE), default=None, metavar="HxW",
                      help="processing size, e.g. 240x320 (default: the visible frame's)")
    proc.add_argument("--stretch", choices=("minmax", "none"), default="minmax",
                      help="stretch the fused image by its min/max as the released inference does (default)")
    proc.add_argument("--preprocess", choices=("auto", "numpy", "cuda", "pycuda", "cupy"), default="auto",
                      help="where pre-processing runs: CUDA kernels when usable, else NumPy/OpenCV")
    proc.add_argument("--threads", type=int_in(1, 1024), default=None, help="PyTorch CPU threads")

    out = p.add_argument_group("outputs")
    out.add_argument("--show", action="store_true", help="show a window (needs a display)")
    out.add_argument("--save", default=None, metavar="VIDEO", help="write the output video (.mp4, .avi, .mkv)")
    out.add_argument("--save-fps", type=float_in(0.0, 1000.0, min_inclusive=False), default=None,
                     help="frame rate written into the video (default: the visible source's)")
    out.add_argument("--frames-dir", default=None, help="write every output frame as an image into this folder")
    out.add_argument("--jsonl", default=None, help="write detections per frame as JSON lines")
    out.add_argument("--serve", type=port, default=None, metavar="PORT",
                     help="MJPEG stream at http://HOST:PORT/ (1-65535)")
    out.add_argument("--serve-host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it on the network)")
    out.add_argument("--stats", default=None, help="write run statistics (JSON) here at the end")
    out.add_argument("--out", default=None, nargs="?", const="", metavar="DIR",
                     help="folder for live.mp4, detections.jsonl and stats.json; '--out' alone: runs/live/exp "
                          "(then exp2, ...); an existing folder gets the next free number")
    out.add_argument("--exist-ok", action="store_true", help="write into an existing --out folder")
    out.add_argument("--view", choices=("fused", "side-by-side"), default="fused", help="output layout")
    out.add_argument("--no-hud", action="store_true", help="no FPS/latency text on the frames")
    out.add_argument("--max-frames", type=positive_int, default=None, help="stop after N output frames")
    out.add_argument("--duration", type=positive_float, default=None, help="stop after this many seconds")
    p.set_defaults(func=run)


def parse_hw(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """'240x320' → (240, 320); a parsed (H, W) and None stay as they are."""
    if not text or isinstance(text, tuple):
        return text or None
    return parse_size(text, "--size", max_side=MAX_SIDE)


def config_from_args(args):
    """The ``LiveConfig`` for parsed arguments."""
    from tdfusion_edge.apps.pipeline import LiveConfig
    return LiveConfig(
        ir=args.ir, vis=args.vis, ir_options=args.ir_opts, vis_options=args.vis_opts,
        homography=args.homography, weights=args.weights, backend=args.backend, device=args.device, half=args.half,
        det=args.det, det_conf=args.det_conf, det_imgsz=args.det_imgsz, det_precision=args.det_precision,
        size=parse_hw(args.size),
        stretch=args.stretch, preprocess=args.preprocess, realtime=args.realtime, max_skew_ms=args.max_skew_ms,
        stall_timeout=args.stall_timeout, max_frames=args.max_frames, duration=args.duration, view=args.view,
        hud=not args.no_hud, show=args.show, save=args.save, save_fps=args.save_fps, frames_dir=args.frames_dir,
        jsonl=args.jsonl, serve=args.serve, serve_host=args.serve_host, stats_path=args.stats, output_dir=args.out,
        threads=args.threads, overlap=args.overlap, calib=args.calib)


def run(args) -> int:
    from tdfusion_edge.apps.registration import load_homography
    from tdfusion_edge.apps.sources import open_source

    # Light checks first, before PyTorch and the model load: sources are built (not opened) so bad
    # strings and options fail in a second, and the homography file is read through its safe loader.
    if args.homography:
        load_homography(args.homography)
    for role, spec, opts in (("ir", args.ir, args.ir_opts), ("vis", args.vis, args.vis_opts)):
        open_source(spec, role, opts)
    from tdfusion_edge.apps.pipeline import hold_repeated_interrupts, run_live
    from tdfusion_edge.validation.detector import check_detector_spec

    check_detector_spec(args.det)  # before any source opens or any file is written
    if args.out is not None:
        args.out = str(run_dir(args.out, "live", args.exist_ok))
    if args.half and not _cuda_device(args.device):
        log.warning("--half ignored: no CUDA device here (--device %s); fusion and detection run in FP32", args.device)
        args.half = False
    restore_sigint = hold_repeated_interrupts()  # a second Ctrl-C must not cut the summary short either
    stats = None
    try:
        stats = run_live(config_from_args(args))
        for line in stats.summary_lines():
            print(line)
        if getattr(args, "stats", None) or getattr(args, "out", None):
            print(f"stats: {stats.config.get('stats_path')}")
        if getattr(args, "out", None):
            print(f"outputs in {Path(args.out).resolve()}")
        if getattr(args, "verbose", False):
            print(json.dumps(stats.latency_ms, indent=2))
    finally:
        if stats is not None and stats.stopped_by == "interrupted":
            # Everything is written and the process is on its way out: a late press must not turn the
            # exit into a signal death during interpreter shutdown.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            restore_sigint()
    return 130 if stats.stopped_by == "interrupted" else 0


def _cuda_device(name: str) -> bool:
    """Whether ``--device`` means a usable CUDA device (auto: one is present)."""
    if name == "cpu":
        return False
    import torch
    return torch.cuda.is_available()
