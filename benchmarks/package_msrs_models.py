"""Package a TDFusion run on MSRS detection and its detector as the built-in models ``tdfusion-msrs``
(F + G) and ``msrs`` (YOLOv8n, int8-stored weights), each file holding how it was made (not a pytest test; run once).

    python benchmarks/package_msrs_models.py --run runs/tdfusion_msrs \\
        --detector runs/task_benefit_shipped/runs/tdfusion/seed0/weights/best.pt \\
        --results runs/task_benefit_shipped/results.json --data-root ../shared/data/msrs_det \\
        --note "history=20 epochs from yolov8n.yaml (the table's tdfusion seed-0 run), then 30 from it"

Writes ``tdfusion_edge/weights/tdfusion_msrs.pt``, ``tdfusion_msrs_loss_generator.pt`` and
``yolov8n_msrs.tdet.pt`` (or under ``--dest``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="training run folder (best_fusion_net.pt, best_loss_generator.pt)")
    p.add_argument("--detector", required=True, help="ultralytics best.pt trained on the run's fused images")
    p.add_argument("--results", help="task_benefit results.json holding that detector's run (its schedule, mAP)")
    p.add_argument("--dest", default=str(REPO / "tdfusion_edge" / "weights"))
    p.add_argument("--det-precision", choices=("fp16", "int8"), default="int8",
                   help="how the detector's weights are stored (int8: per-channel weight-only, measured by --data-root)")
    p.add_argument("--note", action="append", default=[], metavar="KEY=VALUE", help="a fact for the detector's metadata")
    p.add_argument("--data-root", help="msrs_det folder: measure the written pair with tdfusion-edge val and "
                                       "record the numbers in the detector's metadata")
    args = p.parse_args(argv)

    from tdfusion_edge.checkpoints import atomic_torch_save, load_model, save_checkpoint
    from tdfusion_edge.train.state import load_state
    from tdfusion_edge.validation.detector import convert_detector

    run, dest = Path(args.run), Path(args.dest)
    state = load_state(run / "best.pt")
    cfg = state["config"]
    trained = {
        "trainer": "tdfusion-edge train (meta-learning: inner F step with graph, outer G step, fusion phase)",
        "data": "MSRS detection pairs, msrs_det train split (201 pairs, day and night)",
        "task": "det (YOLOv8n, ultralytics v8DetectionLoss)",
        "best": state.get("best"),
        "config": {k: cfg[k] for k in ("epochs", "meta_steps", "fusion_steps", "batch_size", "crop_size",
                                      "task_size", "lr", "g_update", "g_lr", "alpha", "intensity_form",
                                      "init_fusion", "seed") if k in cfg},
        "task_init": "YOLOv8n trained on the w = 1/2 built-in fusion of the train split (benchmarks/task_benefit.py)",
    }
    for kind, src, name in (("FusionNet", "best_fusion_net.pt", "tdfusion_msrs.pt"),
                            ("LossGenerator", "best_loss_generator.pt", "tdfusion_msrs_loss_generator.pt")):
        model, _ = load_model(run / src, kind)
        save_checkpoint(model, dest / name, {**trained, "role": "F (fusion)" if kind == "FusionNet" else "G (loss weights)"})
        print(f"wrote {dest / name}")
    notes = {"trainer": "ultralytics DetectionTrainer via benchmarks/task_benefit.py (no pretrained download)",
             "trained_on": "msrs_det train split (201 pairs) fused by tdfusion-msrs, boxes of labels/",
             "classes": "person, bicycle, car"}
    for item in args.note:
        key, _, value = item.partition("=")
        notes[key] = value
    if args.results:
        results = json.loads(Path(args.results).read_text())
        entry = next((v for v in results["runs"].values() if Path(v["best"]).resolve() == Path(args.detector).resolve()),
                     None)
        if entry is None:
            raise SystemExit(f"{args.detector} is not a run of {args.results}")
        schedule = dict(results["schedule"])
        schedule["model"] = Path(schedule["model"]).name  # a file name, not this machine's path
        notes.update({"schedule": json.dumps(schedule), "seed": str(entry["seed"]),
                      "val_mAP50": f"{entry['metrics']['mAP50']:.6f}",
                      "val_mAP50-95": f"{entry['metrics']['mAP50-95']:.6f}"})
    out = convert_detector(args.detector, dest / "yolov8n_msrs.tdet.pt", precision=args.det_precision,
                           provenance={**notes, "storage": args.det_precision})
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if args.data_root:
        shipped = _val(dest / "tdfusion_msrs.pt", out, os.path.abspath(args.data_root))
        notes = {**notes, "storage": args.det_precision}
        notes.update({"shipped_val_mAP50": f"{shipped['mAP50']:.6f}", "shipped_val_mAP50-95": f"{shipped['mAP50-95']:.6f}",
                      "shipped_val_command": "tdfusion-edge val --data msrs_det.yaml --root <msrs_det> --split val "
                                             "--weights tdfusion-msrs --det msrs --imgsz 320"})
        raw = torch.load(out, weights_only=True)
        raw["provenance"] = notes
        atomic_torch_save(raw, out)
        print(f"shipped pair on val: mAP50 {shipped['mAP50']:.4f}, mAP50-95 {shipped['mAP50-95']:.4f}")
    return 0


def _val(fusion: Path, detector: Path, root: str) -> dict:
    """``tdfusion-edge val`` of the written files on the val split (imgsz 320, as the detector was trained)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "val.json"
        cmd = [sys.executable, "-m", "tdfusion_edge.cli", "val", "--data", "msrs_det.yaml", "--root", root,
               "--split", "val", "--weights", str(fusion), "--det", str(detector), "--imgsz", "320",
               "--json", str(report)]
        subprocess.run(cmd, check=True, cwd=tmp)
        return json.loads(report.read_text())["metrics"]


if __name__ == "__main__":
    sys.exit(main())
