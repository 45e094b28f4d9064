"""``tdfusion-edge convert-det``: an ultralytics YOLO .pt into this project's safe detector format."""
from __future__ import annotations

from tdfusion_edge.errors import TDFusionError

from .common import add_command


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "convert-det",
                    "convert a YOLOv8 .pt (read weights-only, allow-listed) into the safe own detector format",
                    "tdfusion-edge convert-det yolov8n.pt --out yolov8n.tdet.pt")
    p.add_argument("source", help="ultralytics YOLOv8 detection .pt (or a model yaml, for an untrained net)")
    p.add_argument("--out", default=None, help="output file (default: <stem>.tdet.pt here)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="storage of the weights: fp32 (as trained), fp16 (half the size) or int8 weights with a "
                        "scale per output channel (a quarter); always read back as fp32")
    p.add_argument("--note", action="append", default=[], metavar="KEY=VALUE",
                   help="a provenance fact kept in the file, e.g. --note trained_on=msrs_det (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tdfusion_edge.validation.detector import convert_detector, load_detector_model

    notes = {}
    for item in args.note:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TDFusionError(f"--note {item!r} is not KEY=VALUE")
        notes[key.strip()] = value
    out = convert_detector(args.source, args.out, precision=args.precision, provenance=notes)
    model = load_detector_model(str(out))  # read back: the file is usable as --det / task_weights
    print(f"wrote {out} ({len(model.names)} classes, {out.stat().st_size / 1e6:.1f} MB); "
          f"use it as --det {out} or --set task_weights={out}")
    return 0
