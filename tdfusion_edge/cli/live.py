"""``tdfusion-edge live``: two camera streams → registration → fusion → YOLOv8 → screen, file or stream."""
from __future__ import annotations

import argparse
import json

from .common import add_command

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
    src.add_argument("--max-skew-ms", type=float, default=40.0, help="largest IR/visible time difference of a pair")
    src.add_argument("--stall-timeout", type=float, default=None,
                     help="seconds without frames before a live source counts as lost (default: max(1 s, 3 frames))")

    proc = p.add_argument_group("processing")
    proc.add_argument("--homography", default=None, help="IR→visible homography (YAML/JSON from `tdfusion-edge calibrate`)")
    proc.add_argument("--weights", default=None, help="fusion checkpoint (default: the package's weights)")
    proc.add_argument("--backend", default="auto", help="fusion backend: auto, torch, onnxruntime, tensorrt")
    proc.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    proc.add_argument("--half", action="store_true", help="FP16 on GPU backends")
    proc.add_argument("--det", default="none",
                      help="detector: none (fusion only), yolov8n.pt, yolov8n.yaml (untrained), or a .pt/.onnx/.engine path")
    proc.add_argument("--det-conf", type=float, default=0.25, help="detection confidence threshold")
    proc.add_argument("--det-imgsz", type=int, default=None, help="detector input size (must match a static engine)")
    proc.add_argument("--size", default=None, metavar="HxW", help="processing size, e.g. 240x320 (default: the visible frame's)")
    proc.add_argument("--stretch", choices=("minmax", "none"), default="minmax",
                      help="stretch the fused image by its min/max as the released inference does (default)")
    proc.add_argument("--preprocess", choices=("auto", "numpy", "cuda", "pycuda", "cupy"), default="auto",
                      help="where pre-processing runs: CUDA kernels when usable, else NumPy/OpenCV")
    proc.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")

    out = p.add_argument_group("outputs")
    out.add_argument("--show", action="store_true", help="show a window (needs a display)")
    out.add_argument("--save", default=None, metavar="VIDEO", help="write the output video (.mp4, .avi, .mkv)")
    out.add_argument("--save-fps", type=float, default=None, help="frame rate written into the video (default: the visible source's)")
    out.add_argument("--frames-dir", default=None, help="write every output frame as an image into this folder")
    out.add_argument("--jsonl", default=None, help="write detections per frame as JSON lines")
    out.add_argument("--serve", type=int, default=None, metavar="PORT", help="MJPEG stream at http://HOST:PORT/")
    out.add_argument("--serve-host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it on the network)")
    out.add_argument("--stats", default=None, help="write run statistics (JSON) here at the end")
    out.add_argument("--out", default=None, help="folder for live.mp4, detections.jsonl and stats.json")
    out.add_argument("--view", choices=("fused", "side-by-side"), default="fused", help="output layout")
    out.add_argument("--no-hud", action="store_true", help="no FPS/latency text on the frames")
    out.add_argument("--max-frames", type=int, default=None, help="stop after N output frames")
    out.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=run)


def parse_hw(text: str | None) -> tuple[int, int] | None:
    """'240x320' → (240, 320); None stays None."""
    if not text:
        return None
    from tdfusion_edge.apps.synthetic_stream import parse_hw as parse_size

    return parse_size(text)


def config_from_args(args):
    """The ``LiveConfig`` for parsed arguments."""
    from tdfusion_edge.apps.pipeline import LiveConfig
    return LiveConfig(
        ir=args.ir, vis=args.vis, ir_options=args.ir_opts, vis_options=args.vis_opts,
        homography=args.homography, weights=args.weights, backend=args.backend, device=args.device, half=args.half,
        det=args.det, det_conf=args.det_conf, det_imgsz=args.det_imgsz, size=parse_hw(args.size),
        stretch=args.stretch, preprocess=args.preprocess, realtime=args.realtime, max_skew_ms=args.max_skew_ms,
        stall_timeout=args.stall_timeout, max_frames=args.max_frames, duration=args.duration, view=args.view,
        hud=not args.no_hud, show=args.show, save=args.save, save_fps=args.save_fps, frames_dir=args.frames_dir,
        jsonl=args.jsonl, serve=args.serve, serve_host=args.serve_host, stats_path=args.stats, output_dir=args.out,
        threads=args.threads)


def run(args) -> int:
    from tdfusion_edge.apps.pipeline import run_live
    stats = run_live(config_from_args(args))
    for line in stats.summary_lines():
        print(line)
    if getattr(args, "stats", None) or getattr(args, "out", None):
        print(f"stats: {stats.config.get('stats_path')}")
    if getattr(args, "verbose", False):
        print(json.dumps(stats.latency_ms, indent=2))
    return 130 if stats.stopped_by == "interrupted" else 0
