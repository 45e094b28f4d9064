"""Task benefit of each fusion input, the paper's way (TDFusion Tables 2 and 4): a YOLOv8n detector trained
from ``yolov8n.yaml`` by ultralytics' trainer on each input (IR only, visible only, ReFusion, ours w = ½,
TDFusion, extra variants), same schedule and seeds, then mAP50 / mAP50-95 on the val split as mean ± std.

Resumable: each (input, seed) result is written to ``<out>/results.json`` when it is done and skipped on a
rerun; an interrupted ultralytics run continues from its own ``last.pt`` (``resume=True``). See
docs/task_benefit.md.

    python benchmarks/task_benefit.py --data msrs_det.yaml --root /data/msrs_det \\
        --refusion /weights/ReFusion_IVIF.pth --tdfusion runs/msrs_det/fusion_net.pt --out runs/task_benefit
    python benchmarks/task_benefit.py --data msrs_det.yaml --root ../shared/data/msrs_det --smoke --out runs/tb_smoke
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tdfusion_edge.data.spec import load_dataset_yaml
from tdfusion_edge.det_inputs import resolve_source, write_data_yaml, write_split
from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.tasks.det_val import format_table, resolve_detector, validate
from tdfusion_edge.validation.detector import check_detector_spec

# Default schedule (see docs/task_benefit.md for how it was sized: one input × one seed ≤ 15 min on the
# project's 2-core CPU).
DEFAULTS = {"epochs": 20, "imgsz": 320, "batch": 16, "seeds": [0, 1], "workers": 2}
SMOKE = {"epochs": 1, "imgsz": 64, "batch": 2, "seeds": [0], "limit": 4, "inputs": ["ir", "vis"]}
MODEL_YAML = "yolov8n.yaml"  # no pretrained weights exist offline: every detector starts from the yaml
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Schedule:
    """What every (input, seed) run shares; a results file only ever holds runs of one schedule."""

    epochs: int
    imgsz: int
    batch: int
    workers: int
    limit: int | None
    model: str = MODEL_YAML

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="msrs_det.yaml", help="detection dataset YAML with train and val splits")
    p.add_argument("--root", default=None, help="dataset root (overrides the YAML's path:)")
    p.add_argument("--out", required=True, help="output folder: rendered inputs, ultralytics runs, results")
    p.add_argument("--refusion", default=None, help="ReFusion checkpoint (released ReFusion_IVIF.pth)")
    p.add_argument("--tdfusion", default=None, help="meta-learned TDFusion checkpoint (fusion_net.pt or run folder)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=WEIGHTS",
                   help="an extra input row (fusion checkpoint, run folder, built-in name, ir or vis); repeatable")
    p.add_argument("--only", default=None, help="comma-separated subset of the input names to run")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help=f"seeds (default {DEFAULTS['seeds']})")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per run (default {DEFAULTS['epochs']})")
    p.add_argument("--imgsz", type=int, default=None, help=f"train and val image size (default {DEFAULTS['imgsz']})")
    p.add_argument("--batch", type=int, default=None, help=f"batch size (default {DEFAULTS['batch']})")
    p.add_argument("--workers", type=int, default=None, help=f"dataloader workers (default {DEFAULTS['workers']})")
    p.add_argument("--limit", type=int, default=None, help="use only the first N samples of each split")
    p.add_argument("--backend", default="auto", help="fusion backend for rendering the inputs (auto, torch, ...)")
    p.add_argument("--device", default="cpu", help="ultralytics device: cpu or a CUDA index")
    p.add_argument("--init-from", default=None, metavar="BEST_PT",
                   help="start every run from this detector (a best.pt of an earlier run here) instead of the yaml: "
                        "a longer schedule for one row (a new --out)")
    p.add_argument("--smoke", action="store_true",
                   help="2 inputs (ir, vis), 1 seed, 1 epoch, 4 images per split, imgsz 64: checks the pipeline")
    return p.parse_args(argv)


def plan_inputs(args) -> dict[str, str]:
    """Input name → what ``resolve_source`` takes, in table order."""
    inputs = {"ir": "ir", "vis": "vis"}
    if args.refusion:
        inputs["refusion"] = args.refusion
    inputs["ours_w0.5"] = "default"
    if args.tdfusion:
        inputs["tdfusion"] = args.tdfusion
    for item in args.input:
        name, sep, weights = item.partition("=")
        if not sep or not name or not weights:
            raise TDFusionError(f"--input expects NAME=WEIGHTS, got {item!r}")
        inputs[name] = weights
    if args.smoke:
        inputs = {k: inputs[k] for k in SMOKE["inputs"]}
    if args.only:
        keep = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = [k for k in keep if k not in inputs]
        if unknown:
            raise TDFusionError(f"--only names unknown inputs {unknown} (known: {', '.join(inputs)})")
        inputs = {k: inputs[k] for k in keep}
    return inputs


def schedule_from(args) -> tuple[Schedule, list[int]]:
    base = {**DEFAULTS, **({k: v for k, v in SMOKE.items() if k not in ("inputs",)} if args.smoke else {})}
    pick = {k: getattr(args, k) if getattr(args, k, None) is not None else base.get(k)
            for k in ("epochs", "imgsz", "batch", "workers", "limit", "seeds")}
    if pick["imgsz"] % 32 or pick["imgsz"] < 32:
        raise TDFusionError(f"--imgsz must be a multiple of 32, got {pick['imgsz']}")
    if pick["epochs"] < 1 or pick["batch"] < 1:
        raise TDFusionError("--epochs and --batch must be ≥ 1")
    seeds = list(pick.pop("seeds"))
    if args.init_from:
        init = Path(args.init_from)
        if not init.is_file():
            raise TDFusionError(f"--init-from {init} not found")
        check_detector_spec(str(init))  # allow-listed before ultralytics unpickles it to start training
        pick["model"] = str(init.resolve())
    return Schedule(**pick), seeds


class Results:
    """``results.json``: the schedule and one entry per finished (input, seed) run, rewritten after each."""

    def __init__(self, path: Path, schedule: Schedule, data: str):
        self.path = path
        self.doc = {"schedule": schedule.to_dict(), "data": data, "runs": {}}
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("schedule") != schedule.to_dict():
                raise TDFusionError(f"{path} holds runs of another schedule {old.get('schedule')}; "
                                    f"use another --out or the same options")
            self.doc["runs"] = old.get("runs", {})

    def done(self, key: str) -> dict | None:
        return self.doc["runs"].get(key)

    def record(self, key: str, entry: dict) -> None:
        self.doc["runs"][key] = entry
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1) + "\n")
        tmp.replace(self.path)


def render_input(name: str, weights: str, spec, cache: Path, schedule: Schedule, backend: str) -> tuple[Path, dict]:
    """Fuse (or copy) train and val of one input into ``cache/name``; returns its data YAML and source."""
    source = resolve_source(weights)
    folder = cache / name
    start = time.perf_counter()
    for split in SPLITS:
        write_split(spec, split, source, folder, limit=schedule.limit, backend=backend)
    log(f"{name}: inputs ready in {folder} ({time.perf_counter() - start:.0f} s)")
    return write_data_yaml(folder, spec.names, SPLITS), source.describe()


def _finished_epochs(run_dir: Path) -> int:
    """Epochs ultralytics has logged to its results.csv in ``run_dir`` (0 when none)."""
    path = run_dir / "results.csv"
    if not path.is_file():
        return 0
    with open(path, newline="") as fh:
        # the largest epoch number: a resumed run may log its interrupted epoch twice
        return max((int(float(r["epoch"])) for r in ({k.strip(): v for k, v in row.items()}
                                                     for row in csv.DictReader(fh)) if r.get("epoch")), default=0)


def _train_seconds(run_dir: Path) -> float | None:
    """Cumulative training time ultralytics logs in results.csv (its ``time`` column), if present."""
    path = run_dir / "results.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(fh)]
    return float(rows[-1]["time"]) if rows and rows[-1].get("time") else None


def train_detector(data_yaml: Path, run_dir: Path, seed: int, schedule: Schedule, device: str) -> tuple[Path, bool]:
    """Train YOLOv8n (or continue an interrupted run); returns (best.pt, whether it resumed)."""
    from ultralytics import YOLO

    last, best = run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt"
    if _finished_epochs(run_dir) >= schedule.epochs and best.is_file():
        return best, False  # trained before the result was recorded (interrupted during evaluation)
    if last.is_file():
        # last.pt is a pickle that this script's own earlier run wrote; ultralytics loads it to resume
        YOLO(str(last)).train(resume=True)
        return best, True
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an attempt that died before its first checkpoint
    YOLO(schedule.model).train(
        data=str(data_yaml), epochs=schedule.epochs, imgsz=schedule.imgsz, batch=schedule.batch,
        workers=schedule.workers, seed=seed, deterministic=True, device=device,
        pretrained=schedule.model != MODEL_YAML, amp=False,
        plots=False, project=str(run_dir.parent), name=run_dir.name, exist_ok=True, verbose=False,
        val=False)  # no per-epoch validation (CPU time); best.pt is then the last epoch, validated below
    return best, False


def run_one(name: str, seed: int, data_yaml: Path, names, out: Path, schedule: Schedule, device: str) -> dict:
    """Train on one input with one seed, then validate best.pt exactly as ``tdfusion-edge val`` does."""
    run_dir = (out / "runs" / name / f"seed{seed}").resolve()
    start = time.perf_counter()
    best, resumed = train_detector(data_yaml, run_dir, seed, schedule, device)
    wall = time.perf_counter() - start
    if not best.is_file():
        raise TDFusionError(f"{name} seed {seed}: ultralytics wrote no {best}")
    result = validate(data_yaml, "val", resolve_detector(str(best), names), imgsz=schedule.imgsz,
                      batch=schedule.batch, save_dir=run_dir / "val", device=device)
    print(format_table(result, title=f"{name} seed {seed} (val)"), flush=True)
    return {"input": name, "seed": seed, "best": str(best), "resumed": resumed,
            "train_seconds": _train_seconds(run_dir), "wall_seconds_this_session": round(wall, 1),
            "metrics": result.to_dict()}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


TABLE_ORDER = ("ir", "vis", "refusion", "ours_w0.5", "tdfusion")


def summarise(results: Results, sources: dict[str, dict]) -> dict:
    """Per input with finished runs in ``results.json`` (this invocation's or earlier ones, table order, then
    extra variants): mAP50 / mAP50-95 mean ± std over its seeds, and the time per run."""
    recorded = list(dict.fromkeys(r["input"] for r in results.doc["runs"].values()))
    names = [n for n in TABLE_ORDER if n in recorded] + [n for n in recorded if n not in TABLE_ORDER]
    rows = []
    for name in names:
        runs = sorted((r for r in results.doc["runs"].values() if r["input"] == name), key=lambda r: r["seed"])
        m50, s50 = mean_std([r["metrics"]["mAP50"] for r in runs])
        m95, s95 = mean_std([r["metrics"]["mAP50-95"] for r in runs])
        secs = [r["train_seconds"] or r["wall_seconds_this_session"] for r in runs]
        rows.append({"input": name, "source": sources.get(name) or runs[0].get("source", {}), "seeds": [r["seed"] for r in runs],
                     "mAP50_mean": m50, "mAP50_std": s50, "mAP50-95_mean": m95, "mAP50-95_std": s95,
                     "train_minutes_per_run": statistics.fmean(secs) / 60,
                     "per_seed": {r["seed"]: {"mAP50": r["metrics"]["mAP50"], "mAP50-95": r["metrics"]["mAP50-95"]}
                                  for r in runs}})
    return {"schedule": results.doc["schedule"], "data": results.doc["data"], "rows": rows}


def markdown(summary: dict) -> str:
    """The comparison table in Markdown."""
    s = summary["schedule"]
    lines = [f"YOLOv8n from `{s['model']}`, {s['epochs']} epochs, imgsz {s['imgsz']}, batch {s['batch']}"
             + (f", first {s['limit']} samples per split" if s["limit"] else "") + "; val split; mean ± std over seeds.",
             "", "| input | seeds | mAP50 | mAP50-95 | train min / run |", "|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['input']} | {len(r['seeds'])} | {r['mAP50_mean']:.4f} ± {r['mAP50_std']:.4f} | "
                     f"{r['mAP50-95_mean']:.4f} ± {r['mAP50-95_std']:.4f} | {r['train_minutes_per_run']:.1f} |")
    return "\n".join(lines) + "\n"


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """A progress line with the elapsed time (stderr, so it shows beside ultralytics' bars)."""
    print(f"[task_benefit {time.perf_counter() - _T0:7.0f} s] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        schedule, seeds = schedule_from(args)
        inputs = plan_inputs(args)
        spec = load_dataset_yaml(args.data, root=args.root)
        if spec.task != "det":
            raise TDFusionError(f"{args.data} is a {spec.task!r} dataset; the task-benefit protocol needs detection")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = Results(out / "results.json", schedule, str(spec.root))
        todo = [(n, s) for n in inputs for s in seeds]
        log(f"{len(inputs)} inputs × {len(seeds)} seeds = {len(todo)} runs; schedule {schedule.to_dict()}")
        sources, yamls, durations = {}, {}, []
        for i, (name, seed) in enumerate(todo, 1):
            key = f"{name}/seed{seed}"
            if results.done(key):
                log(f"[{i}/{len(todo)}] {key}: done before, skipped")
                continue
            if name not in yamls:
                yamls[name], sources[name] = render_input(name, inputs[name], spec, out / "inputs", schedule,
                                                          args.backend)
            eta = f", ETA {statistics.fmean(durations) * (len(todo) - i + 1) / 60:.0f} min" if durations else ""
            log(f"[{i}/{len(todo)}] {key}: training{eta}")
            start = time.perf_counter()
            entry = run_one(name, seed, yamls[name], spec.names, out, schedule, args.device)
            entry["source"] = sources[name]
            results.record(key, entry)
            durations.append(time.perf_counter() - start)
            log(f"[{i}/{len(todo)}] {key}: mAP50 {entry['metrics']['mAP50']:.4f}, "
                f"mAP50-95 {entry['metrics']['mAP50-95']:.4f} ({durations[-1] / 60:.1f} min)")
        summary = summarise(results, sources)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        table = markdown(summary)
        (out / "summary.md").write_text(table)
        print(table)
        log(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")
    except TDFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
