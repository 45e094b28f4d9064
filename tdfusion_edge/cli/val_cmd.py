"""``tdfusion-edge val``: detection mAP of a detector on a dataset split fused by a fusion model (or one modality)."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from tdfusion_edge.errors import TDFusionError

from .common import add_command

SPLITS = ("val", "test")


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "val",
                    "fuse a dataset split, run a detector on it, print mAP50 and mAP50-95 per class (ultralytics' validator)",
                    "tdfusion-edge val --data msrs_det.yaml --root /data/msrs_det --split val --weights default "
                    "--det runs/det/best.pt --imgsz 320 --json val.json")
    p.add_argument("--data", required=True, help="dataset YAML of a detection dataset (e.g. msrs_det.yaml)")
    p.add_argument("--root", default=None, help="dataset root folder (overrides the YAML's path:)")
    p.add_argument("--split", default="val", choices=SPLITS, help="split to evaluate (default val)")
    p.add_argument("--weights", default="default",
                   help="fusion model: 'default' (built-in), a released .pth, a project checkpoint or run folder; "
                        "or 'ir' / 'vis' for single-modality input")
    p.add_argument("--det", required=True,
                   help="detector: a .pt (ultralytics), an exported .onnx, a model .yaml (untrained) or a built-in name")
    p.add_argument("--imgsz", type=int, default=640, help="validator image size (use the detector's training size)")
    p.add_argument("--batch", type=int, default=16, help="validation batch size")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.add_argument("--cache", default=None,
                   help="keep the rendered (fused) images in this folder and reuse them (default: a temporary folder)")
    p.add_argument("--backend", default="auto", help="fusion backend: auto, torch, onnxruntime, tensorrt")
    p.add_argument("--stretch", default="minmax", choices=("minmax", "none"), help="fused output stretch")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples of the split")
    p.add_argument("--device", default="cpu", help="detector device for ultralytics: cpu or a CUDA index")
    p.set_defaults(func=run)


def _check_args(args) -> None:
    if args.imgsz < 32 or args.imgsz % 32:
        raise TDFusionError(f"--imgsz must be a multiple of 32 (≥ 32), got {args.imgsz}")
    if args.batch < 1:
        raise TDFusionError(f"--batch must be ≥ 1, got {args.batch}")
    if args.limit is not None and args.limit < 1:
        raise TDFusionError(f"--limit must be ≥ 1, got {args.limit}")


def evaluate(args, work: Path) -> dict:
    """Render the split into ``work``, validate the detector on it; returns the JSON payload."""
    from tdfusion_edge.data.spec import load_dataset_yaml
    from tdfusion_edge.det_inputs import resolve_source, write_data_yaml, write_split
    from tdfusion_edge.tasks.det_val import format_table, resolve_detector, validate

    spec = load_dataset_yaml(args.data, root=args.root)
    if spec.task != "det":
        raise TDFusionError(f"{args.data} is a {spec.task!r} dataset; val evaluates detection")
    source = resolve_source(args.weights, args.stretch)
    model = resolve_detector(args.det, spec.names)
    start = time.perf_counter()
    stems = write_split(spec, args.split, source, work, limit=args.limit, backend=args.backend)
    render_s = time.perf_counter() - start
    data_yaml = write_data_yaml(work, spec.names, [args.split])
    start = time.perf_counter()
    result = validate(data_yaml, args.split, model, imgsz=args.imgsz, batch=args.batch,
                      save_dir=work / "ultralytics", device=args.device)
    val_s = time.perf_counter() - start
    print(format_table(result, title=f"{args.split}: {len(stems)} images, input {args.weights}, detector {args.det}, "
                                     f"imgsz {args.imgsz}"))
    return {"data": str(spec.source), "root": str(spec.root), "split": args.split, "images": len(stems),
            "input": source.describe(), "detector": args.det, "imgsz": args.imgsz,
            "metrics": result.to_dict(), "seconds": {"render": round(render_s, 2), "validate": round(val_s, 2)}}


def run(args) -> int:
    _check_args(args)
    if args.cache:
        payload = evaluate(args, Path(args.cache))
    else:
        with tempfile.TemporaryDirectory(prefix="tdfusion-val-") as tmp:
            payload = evaluate(args, Path(tmp))
    if args.json:
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        except OSError as exc:
            raise TDFusionError(f"cannot write {args.json}: {exc.strerror or exc}") from None
        print(f"wrote {args.json}")
    return 0
