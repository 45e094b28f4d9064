"""``tdfusion-edge export``: the fusion network (optionally + YOLOv8) to ONNX or a TensorRT engine."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.validation.numbers import float_in, int_in, positive_int

from .common import add_command

log = logging.getLogger("tdfusion_edge.export")

MAX_SIDE = 4096   # per side of --imgsz (a 4K camera fits); larger graphs do not fit an edge device
MAX_BATCH = 64
DET_STRIDE = 32   # YOLOv8's largest stride: with --det both sides must be multiples of it


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "export", "export the fusion network to ONNX or a TensorRT engine",
                    "tdfusion-edge export --weights ReFusion_IVIF.pth --format onnx --imgsz 480 640")
    p.add_argument("--weights", default=None,
                   help="fusion checkpoint (released layout or ours), or a built-in name: default, lite, tdfusion-msrs; "
                        "default: built-in weights")
    p.add_argument("--format", default="onnx", choices=("onnx", "engine"), help="ONNX file or TensorRT engine")
    p.add_argument("--imgsz", nargs=2, type=int_in(8, MAX_SIDE), metavar=("H", "W"), default=None,
                   help=f"input height and width, 8-{MAX_SIDE} each (fixed shape; with --dynamic only the "
                        f"parity-check size; with --det multiples of {DET_STRIDE})")
    p.add_argument("--dynamic", action="store_true", help="ONNX with dynamic batch, height and width")
    p.add_argument("--batch", type=int_in(1, MAX_BATCH), default=1, help=f"fixed batch size, 1-{MAX_BATCH} (default 1)")
    p.add_argument("--half", action="store_true", help="FP16 convolutions, FP32 reductions (for FP16 engines)")
    p.add_argument("--int8", action="store_true",
                   help="INT8 engine, calibrated on --calib, kept only if it passes the quality gate")
    p.add_argument("--calib", default=None, metavar="DIR", help="folder with ir/ and vi/ pairs for INT8 calibration")
    p.add_argument("--calib-batches", type=int_in(1, 100000), default=64, help="INT8: calibration batches (default 64)")
    p.add_argument("--int8-min-psnr", type=float_in(0.0, 200.0), default=35.0,
                   help="INT8 gate: worst PSNR vs FP32 in dB (default 35)")
    p.add_argument("--workspace", type=float_in(0.0, 1024.0, min_inclusive=False), default=2.0, metavar="GB",
                   help="TensorRT builder workspace (default 2 GiB)")
    p.add_argument("--det", default=None, metavar="YOLO",
                   help="also put a YOLOv8 detector in the graph: a local .pt (never downloaded), a converted "
                        "detector (convert-det), a model yaml (yolov8n.yaml) or the built-in msrs")
    p.add_argument("--io", default="float", choices=("float", "uint8"),
                   help="graph inputs: float Y in [0,1] (default) or uint8 BGR/gray frames, "
                        "pre/post-processing inside")
    p.add_argument("--stretch", default=None, choices=("none", "minmax"),
                   help="stretch the output by its min/max inside the graph "
                        "(default: minmax for --io uint8, else none)")
    p.add_argument("--opset", type=int_in(17, 30), default=17, help="ONNX opset (≥ 17, default 17)")
    p.add_argument("--out", default=None, help="output file (default: fusion_<H>x<W>[_fp16].onnx/.engine here)")
    p.add_argument("--check-pairs", default=None, metavar="DIR",
                   help="also measure parity on real pairs from DIR (ir/ + vi/), resized to --imgsz unless --dynamic")
    p.add_argument("--check-count", type=positive_int, default=2, help="pairs used by --check-pairs (default 2)")
    p.set_defaults(func=run)


def _validate(args) -> tuple[str, tuple[int, int] | None]:
    if args.batch < 1:
        raise TDFusionError(f"--batch must be positive, got {args.batch}")
    if args.int8 and args.format != "engine":
        raise TDFusionError("--int8 is a TensorRT option: use --format engine")
    if args.int8 and not args.calib:
        raise TDFusionError("--int8 needs --calib DIR (a folder with ir/ and vi/ pairs)")
    if args.calib and not args.int8:
        raise TDFusionError("--calib is only used with --int8")
    if args.format == "engine" and args.dynamic:
        raise TDFusionError("engines are built per camera resolution: drop --dynamic and give --imgsz H W")
    if args.imgsz is None and not args.dynamic:
        raise TDFusionError("give --imgsz H W (or --dynamic for an ONNX with dynamic sizes)")
    if args.det and args.dynamic:
        raise TDFusionError("--det needs a fixed --imgsz (multiples of 32), not --dynamic")
    precision = "int8" if args.int8 else "fp16" if args.half else "fp32"
    imgsz = tuple(args.imgsz) if args.imgsz else None
    if args.det and imgsz and (imgsz[0] % DET_STRIDE or imgsz[1] % DET_STRIDE):
        # Refused rather than rounded silently: the graph's input size is what every frame must match.
        up = tuple(-(-v // DET_STRIDE) * DET_STRIDE for v in imgsz)
        raise TDFusionError(f"--imgsz {imgsz[0]} {imgsz[1]}: with --det both sides must be multiples of {DET_STRIDE} "
                            f"(the detector's stride); the nearest valid size that holds it is --imgsz {up[0]} {up[1]} "
                            f"(frames are letterboxed into it, e.g. live --size {up[0]}x{up[1]})")
    return precision, imgsz


def _default_out(args, precision: str, imgsz) -> Path:
    size = "dynamic" if args.dynamic else f"{imgsz[0]}x{imgsz[1]}"
    det = "_det" if args.det else ""
    suffix = ".engine" if args.format == "engine" else ".onnx"
    return Path(f"fusion{det}_{size}{'' if precision == 'fp32' else '_' + precision}{suffix}")


def _parity_lines(net, result, detector, options, imgsz, args) -> list[str]:
    """Measure onnxruntime vs PyTorch FusionNet (random input, and real pairs when asked), with a
    progress bar: each step is one full-size forward pass, tens of seconds on a CPU."""
    import torch
    from tqdm import tqdm

    from tdfusion_edge.export.onnx_check import max_abs_diffs, ort_session
    from tdfusion_edge.export.onnx_export import build_reference_module, example_inputs

    reference = build_reference_module(net, options, detector)
    size = imgsz or (256, 320)
    batch = args.batch if not args.dynamic else 1
    pairs = None
    if args.check_pairs:
        from tdfusion_edge.export.calibration import CalibrationBatches

        pairs = CalibrationBatches(args.check_pairs, size, 1, options)
    count = min(args.check_count, len(pairs.pairs)) if pairs is not None else 0
    bar = tqdm(total=1 + 2 * (1 + count), desc="parity check", unit="step", leave=False,
               bar_format="{desc}: {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}]")

    def step(desc: str, fn):
        bar.set_description(f"parity check: {desc}")
        out = fn()
        bar.update(1)
        return out

    def compare(inputs) -> dict[str, float]:
        feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
        got = step("onnxruntime", lambda: session.run(None, feeds))
        with torch.inference_mode():
            ref = step("PyTorch reference", lambda: reference(*inputs))
        ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
        return max_abs_diffs(ref, got, [o.name for o in session.get_outputs()])

    try:
        session = step("loading the ONNX into onnxruntime", lambda: ort_session(result.path))
        diffs = compare(example_inputs(options, size, batch))
        ref_kind = "PyTorch FusionNet fp32" + (" (ONNX is fp16)" if result.precision == "fp16" else "")
        lines = [f"parity onnxruntime vs {ref_kind}, random input {size[0]}×{size[1]}: "
                 + ", ".join(f"{k} max abs diff {v:.3g}" for k, v in diffs.items())]
        if pairs is not None:
            worst: dict[str, float] = {}
            for i in range(count):
                feed = {k: torch.from_numpy(v) for k, v in pairs.sample(i, native=args.dynamic).items()}
                if batch > 1:
                    feed = {k: v.repeat(batch, *([1] * (v.ndim - 1))) for k, v in feed.items()}
                for k, v in compare((feed["ir"], feed["vis"])).items():
                    worst[k] = max(worst.get(k, 0.0), v)
            where = "native size" if args.dynamic else f"resized to {size[0]}×{size[1]}"
            lines.append(f"parity on {count} real pair(s) from {args.check_pairs} ({where}): "
                         + ", ".join(f"{k} max abs diff {v:.3g}" for k, v in worst.items()))
    finally:
        bar.close()
    return lines


def run(args) -> int:
    precision, imgsz = _validate(args)  # before the heavy imports: a bad combination fails in a second
    from tdfusion_edge.export.backends import load_weights
    from tdfusion_edge.export.graph_parts import GraphOptions, load_detector
    from tdfusion_edge.export.onnx_export import export_fusion_onnx

    if args.det:
        from tdfusion_edge.validation.detector import check_detector_spec

        check_detector_spec(args.det)  # up front: before the weights load or anything is written
    stretch = args.stretch or ("minmax" if args.io == "uint8" else "none")
    options = GraphOptions(io=args.io, stretch=stretch)
    engine_opts = None
    if args.format == "engine":
        from tdfusion_edge.export.tensorrt_build import EngineOptions
        from tdfusion_edge.export.trt_import import require_tensorrt

        engine_opts = EngineOptions(shape=imgsz, precision=precision, batch=args.batch, workspace_gb=args.workspace,
                                    calib_dir=args.calib, calib_batches=args.calib_batches,
                                    min_int8_psnr=args.int8_min_psnr, graph=options).validate()
        require_tensorrt()  # fail before the slow export, with one line
    net = load_weights(args.weights)
    detector = load_detector(args.det) if args.det else None
    out = Path(args.out) if args.out else _default_out(args, precision, imgsz)
    onnx_path = out if args.format == "onnx" else out.with_suffix(".onnx")
    onnx_precision = "fp32" if precision == "fp32" else "fp16"
    start = time.perf_counter()
    shape = "dynamic H×W" if args.dynamic else f"{imgsz[0]}×{imgsz[1]}"
    print(f"exporting to ONNX{' with the detector' if detector is not None else ''} ({shape}, {onnx_precision}); "
          "a minute or so on a CPU for camera sizes", flush=True)
    result = export_fusion_onnx(net, onnx_path, None if args.dynamic else imgsz, None if args.dynamic else args.batch,
                                onnx_precision, options, detector, args.opset)
    print(f"wrote {result.describe()} in {time.perf_counter() - start:.1f} s")
    print("onnx.checker: passed")
    for line in _parity_lines(net, result, detector, options, imgsz, args):
        print(line)
    if engine_opts is not None:
        _build_engine(net, onnx_path, out, engine_opts, detector, options)
    return 0


def _build_engine(net, onnx_path: Path, out: Path, opts, detector, options) -> None:
    import numpy as np

    from tdfusion_edge.export.calibration import CalibrationBatches, make_entropy_calibrator
    from tdfusion_edge.export.onnx_check import max_abs_diffs
    from tdfusion_edge.export.onnx_export import build_reference_module, example_inputs
    from tdfusion_edge.export.tensorrt_build import build_engine, gate_int8_engine, trtexec_command
    from tdfusion_edge.export.tensorrt_runtime import TensorRTEngine

    print("equivalent trtexec: " + " ".join(trtexec_command(onnx_path, out, opts)))
    calibrator = None
    if opts.precision == "int8":
        batches = CalibrationBatches(opts.calib_dir, opts.shape, opts.batch, options, max_batches=opts.calib_batches)
        calibrator = make_entropy_calibrator(batches, out.with_suffix(".calib"))
    start = time.perf_counter()
    build_engine(onnx_path, out, opts, calibrator)
    print(f"wrote {out} (TensorRT {opts.precision}, {opts.shape[0]}×{opts.shape[1]}, batch {opts.batch}) "
          f"in {time.perf_counter() - start:.1f} s")
    if opts.precision == "int8":
        report = gate_int8_engine(out, net, opts)
        print(report.describe())
        if not report.passed:
            out.unlink(missing_ok=True)
            raise TDFusionError("INT8 engine rejected by the quality gate (deleted); use --half instead")
    import torch

    inputs = example_inputs(options, opts.shape, opts.batch)
    engine = TensorRTEngine(out)
    try:
        got = engine.run({name: t.numpy() for name, t in zip(options.input_names(), inputs)})
    finally:
        engine.close()
    with torch.inference_mode():
        ref = build_reference_module(net, options, detector)(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    names = [n for n in got]
    diffs = max_abs_diffs(ref, [got[n] for n in names], names)
    print(f"parity TensorRT {opts.precision} vs PyTorch FusionNet fp32: "
          + ", ".join(f"{k} max abs diff {v:.3g}" for k, v in diffs.items())
          + f" (mean output {np.mean(got[names[0]]):.3f})")
