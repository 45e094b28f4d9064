"""The real-time figures, measured in one run: FLOPs per frame, the live app end to end
on a real M3SVD pair of clips, lite vs teacher quality, INT8 vs FP32 of the lite network, INT8 vs FP32
YOLOv8n on onnxruntime, and the machine's load. Writes ``realtime_report.json`` and ``realtime_report.md``.

    python benchmarks/realtime_report.py --out runs/realtime          # ~10 min on the 2-core VM
    python benchmarks/realtime_report.py --out runs/rt --smoke         # a few frames and pairs, seconds

* **Live**: ``tdfusion-edge live --ir M3SVD/ir/CLIP.mp4 --vis M3SVD/vi/CLIP.mp4 --weights lite
  --det yolov8n.yaml --no-realtime --size HxW --max-frames N --stats F`` as a subprocess (the command a
  user runs), read back from its stats JSON: FPS after warm-up and p50/p99 per stage. A second run per
  size adds ``--det-precision int8 --calib M3SVD --backend onnxruntime``.
* **Quality**: lite vs teacher on the held-out RoadScene and MSRS pairs of ``benchmarks/lite_quality.py``
  (same pair lists, same released inference, the 12 metrics in the ``tdfusion`` convention).
* **INT8 vs FP32** of the lite network: onnxruntime-int8 against onnxruntime (fp32) on the same pairs,
  resized to ``--int8-size`` (the live size; an INT8 model is static-shape), calibrated on ``--calib-count`` pairs of the MSRS
  train split and M3SVD frames
  (disjoint from the pairs scored); metrics of both and their % difference (target within 1 %).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import lite_quality as lq  # noqa: E402  (its pair lists, PSNR and targets)
from gpu_sections import _cpu_name  # noqa: E402  (one CPU-name reader for both reports)

SHARED = REPO.parent / "shared" / "data"
INT8_TARGET = 0.01         # INT8 vs FP32 within 1 % on the gated metrics
FPS_TARGETS = {(240, 320): 10.0, (480, 640): 3.0}


def _hw(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _label(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


# ------------------------------------------------------------------------------------------ FLOPs
def measure_flops(sizes) -> dict:
    """GFLOP per frame of TDFusion-lite and the built-in FusionNet (``models.flops.count_flops``)."""
    from tdfusion_edge.export.backends import load_weights
    from tdfusion_edge.models.flops import count_flops

    nets = {"lite": load_weights("lite"), "full": load_weights(None)}
    return {name: {_label(hw): round(count_flops(net, *hw).gflops(), 4) for hw in sizes} for name, net in nets.items()}


# ------------------------------------------------------------------------------------------ live
def run_live(m3svd: Path, clip: str, hw, frames: int, threads: int, out: Path, extra: list[str], tag: str) -> dict:
    """One ``tdfusion-edge live`` subprocess on the clip pair; its stats, reduced to the report's figures."""
    stats = out / f"live_{tag}_{_label(hw)}.json"
    cmd = [sys.executable, "-m", "tdfusion_edge.cli", "live", "--ir", str(m3svd / "ir" / f"{clip}.mp4"),
           "--vis", str(m3svd / "vi" / f"{clip}.mp4"), "--weights", "lite", "--det", "yolov8n.yaml",
           "--no-realtime", "--size", _label(hw), "--max-frames", str(frames), "--threads", str(threads),
           "--stats", str(stats), *extra]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    row = {"command": " ".join(["tdfusion-edge", *cmd[3:]]), "returncode": res.returncode,
           "wall_s": round(time.perf_counter() - start, 1), "load_after": list(os.getloadavg())}
    if res.returncode != 0 or not stats.is_file():
        row["error"] = (res.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return row
    data = json.loads(stats.read_text())
    lat = data["latency_ms"]
    row |= {"fps": data["output_fps"], "frames_out": data["frames_out"], "warmup_frames": data["warmup_frames"],
            "backend": data["config"].get("backend"), "overlap": data.get("overlap"),
            "latency_ms": {k: {"p50": v["p50"], "p99": v["p99"]} for k, v in lat.items()},
            "detector": next((ln.split("; detector: ", 1)[1] for ln in res.stderr.splitlines() if "; detector: " in ln),
                             "")}
    return row


# ------------------------------------------------------------------------------------------ quality
def _score(img: np.ndarray, ir_g: np.ndarray, vis_g: np.ndarray) -> dict:
    from tdfusion_edge.metrics import compute_metrics
    return compute_metrics(img.astype(np.float32), ir_g, vis_g, "tdfusion")


def lite_vs_teacher(sets: dict, max_pairs: int, threads: int) -> dict:
    """Per set: mean 12 metrics of teacher and lite, and lite-vs-teacher PSNR/SSIM (native sizes)."""
    from skimage.metrics import structural_similarity

    from tdfusion_edge.checkpoints import default_weights_path
    from tdfusion_edge.export.backends import create_backend
    from tdfusion_edge.imaging import load_pair
    from tdfusion_edge.inference import fuse_pair
    from tdfusion_edge.metrics import METRIC_NAMES, load_gray_for_metrics

    nets = {"teacher": create_backend("onnxruntime", weights=default_weights_path(), device="cpu", threads=threads),
            "lite": create_backend("onnxruntime", weights="lite", device="cpu", threads=threads)}
    results = {}
    for set_name, root in sets.items():
        items = _limit(lq._pairs(set_name, root, "val"), max_pairs)
        rows, cmp = {"teacher": [], "lite": []}, []
        for it in items:
            pair = load_pair(Path(it.ir_path), Path(it.vis_path), resize=True)
            ir_g, vis_g = load_gray_for_metrics(it.ir_path), load_gray_for_metrics(it.vis_path)
            if ir_g.shape != vis_g.shape:
                continue
            out = {k: (b.fuse(pair.ir_y, pair.vis_y), fuse_pair(b, pair, "minmax").gray) for k, b in nets.items()}
            for k in nets:
                rows[k].append(_score(out[k][1], ir_g, vis_g))
            (t_raw, t_img), (s_raw, s_img) = out["teacher"], out["lite"]
            cmp.append({"psnr_8bit": lq._psnr(s_img, t_img, 255.0), "psnr_raw": lq._psnr(s_raw, t_raw, 1.0),
                        "ssim_8bit": float(structural_similarity(s_img, t_img, data_range=255))})
        mean = {k: {m: float(np.mean([r[m] for r in v])) for m in METRIC_NAMES} for k, v in rows.items()}
        t, s = mean["teacher"], mean["lite"]
        rel = {m: s[m] / t[m] - 1 for m in METRIC_NAMES if t[m]}
        c_mean = {k: float(np.mean([r[k] for r in cmp])) for k in cmp[0]}
        results[set_name] = {"pairs": len(cmp), "mean": mean, "rel_diff": rel, "lite_vs_teacher": c_mean,
                             "lite_vs_teacher_min": {k: float(np.min([r[k] for r in cmp])) for k in cmp[0]},
                             "psnr_met": c_mean["psnr_8bit"] >= lq.TARGET_PSNR_DB,
                             "band_met": all(abs(rel[m]) <= lq.TARGET_REL for m in lq.GATED)}
    for b in nets.values():
        b.close()
    return results


def _limit(items: list, n: int) -> list:
    """At most ``n`` items, evenly spread (0: all)."""
    if not n or len(items) <= n:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def _resized_inputs(it, hw):
    """A pair at ``hw`` (INTER_AREA): the network's Y inputs, and the sources as metric gray images."""
    import cv2

    from tdfusion_edge.imaging import luma_and_chroma, read_image
    from tdfusion_edge.metrics import load_gray_for_metrics

    ys, grays = [], []
    for path in (it.ir_path, it.vis_path):
        img = read_image(path)
        if img.dtype != np.uint8:
            img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        ys.append(np.ascontiguousarray(luma_and_chroma(cv2.resize(img, hw[::-1], interpolation=cv2.INTER_AREA))[0],
                                       dtype=np.float32))
        grays.append(np.round(cv2.resize(load_gray_for_metrics(path), hw[::-1], interpolation=cv2.INTER_AREA)))
    return ys, grays


def int8_vs_fp32(sets: dict, max_pairs: int, hw, calib: Path, threads: int, calib_count: int, gate_count: int) -> dict:
    """The lite network on onnxruntime-int8 vs onnxruntime fp32 at ``hw``: metrics of both, % difference."""
    from tdfusion_edge.errors import TDFusionError
    from tdfusion_edge.export.backends import create_backend
    from tdfusion_edge.export.int8_onnx import Int8Options
    from tdfusion_edge.imaging import is_flat_pair, stretch_minmax, to_uint8
    from tdfusion_edge.metrics import METRIC_NAMES

    fp32 = create_backend("onnxruntime", weights="lite", device="cpu", threads=threads)
    opts = Int8Options(calib_count=calib_count, gate_count=gate_count)
    try:
        int8 = create_backend("onnxruntime-int8", weights="lite", device="cpu", imgsz=hw,
                              calib=[str(c) for c in calib] if isinstance(calib, (list, tuple)) else str(calib),
                              threads=threads, int8_options=opts)
    except TDFusionError as exc:      # the gate refused: that is a result too
        return {"refused": str(exc), "size": _label(hw)}
    out = {"size": _label(hw), "gate": int8.gate_report.describe(), "sets": {},
           "calibration": ", ".join(map(str, calib)) if isinstance(calib, (list, tuple)) else str(calib)}
    for set_name, root in sets.items():
        rows, cmp = {"fp32": [], "int8": []}, []
        for it in _limit(lq._pairs(set_name, root, "val"), max_pairs):
            (ir_y, vis_y), (ir_g, vis_g) = _resized_inputs(it, hw)
            flat = is_flat_pair(ir_y, vis_y)
            imgs = {}
            for k, b in (("fp32", fp32), ("int8", int8)):
                raw = b.fuse(ir_y, vis_y)
                imgs[k] = to_uint8(np.clip(raw, 0, 1) if flat else stretch_minmax(raw))
                rows[k].append(_score(imgs[k], ir_g, vis_g))
            cmp.append(lq._psnr(imgs["int8"], imgs["fp32"], 255.0))
        mean = {k: {m: float(np.mean([r[m] for r in v])) for m in METRIC_NAMES} for k, v in rows.items()}
        rel = {m: mean["int8"][m] / mean["fp32"][m] - 1 for m in METRIC_NAMES if mean["fp32"][m]}
        out["sets"][set_name] = {"pairs": len(cmp), "mean": mean, "rel_diff": rel,
                                 "psnr_int8_vs_fp32_8bit": float(np.mean(cmp)), "psnr_min": float(np.min(cmp)),
                                 "within_1pct": all(abs(rel[m]) <= INT8_TARGET for m in lq.GATED),
                                 "within_1pct_all12": all(abs(v) <= INT8_TARGET for v in rel.values())}
    fp32.close()
    int8.close()
    return out


# ------------------------------------------------------------------------------------------ detector
def detector_speed(sizes, calib: Path, threads: int, rounds: int) -> dict:
    """YOLOv8n (yolov8n.yaml) on onnxruntime, FP32 vs the gated INT8 model: ms per frame (min / median)."""
    import cv2

    from tdfusion_edge.apps.detection import _load_reproducibly
    from tdfusion_edge.export import int8_detector as q
    from tdfusion_edge.export.int8_calib import PairSamples
    from tdfusion_edge.export.onnx_check import ort_session
    from tdfusion_edge.validation.detector import check_detector_spec

    model = _load_reproducibly(check_detector_spec("yolov8n.yaml", deep=False))
    samples = PairSamples(calib)
    frame = samples.frames(len(samples) // 3)[1]
    out = {}
    for hw in sizes:
        shape = q.detector_shape(hw)
        built = q.build_detector_int8_cached(model, shape, samples, threads=threads)
        x = q.letterbox(cv2.resize(frame, hw[::-1], interpolation=cv2.INTER_AREA), shape)[0]
        ms = {}
        for name, path in (("fp32", built.fp32_path), ("int8", built.path)):
            s = ort_session(path, threads)
            s.run(["output0"], {"images": x})
            ts = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                s.run(["output0"], {"images": x})
                ts.append((time.perf_counter() - t0) * 1e3)
            ms[name] = {"min": round(min(ts), 2), "median": round(float(np.median(ts)), 2)}
        out[_label(hw)] = {"input": _label(shape), "ms": ms, "gate": built.report.describe(),
                           "passed": built.report.passed,
                           "speedup_median": round(ms["fp32"]["median"] / ms["int8"]["median"], 2)}
    return out


# ------------------------------------------------------------------------------------------ report
def _f(v, nd=1) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def to_markdown(r: dict) -> str:
    from tdfusion_edge.metrics import METRIC_NAMES

    L = [f"# Real-time report ({r['started']}, {r['machine']['cpu']}, {r['machine']['cpus']} CPUs, "
         f"{r['threads']} threads)", "",
         f"Load average (1/5/15 min) before {r['load_before']}, after {r['load_after']}. Total {r['seconds']:.0f} s.",
         ""]
    if "flops" in r:
        sizes = list(next(iter(r["flops"].values())))
        L += ["## FLOPs per frame (GFLOP)", "", "| network | " + " | ".join(sizes) + " |",
              "|---|" + "---|" * len(sizes)]
        L += [f"| {n} | " + " | ".join(_f(v, 3) for v in row.values()) + " |" for n, row in r["flops"].items()]
        L.append("")
    if "live" in r:
        L += ["## Live app end to end (M3SVD, `--no-realtime`)", "",
              "| size | detector | FPS after warm-up | target | fusion p50/p99 | detect p50/p99 | preprocess p50/p99 "
              "| per-frame total p50/p99 | load after |", "|---|---|---|---|---|---|---|---|---|"]
        for row in r["live"]:
            if "error" in row:
                L.append(f"| {row['size']} | {row['det_precision']} | error: {row['error']} | | | | | | |")
                continue
            lat = row["latency_ms"]
            pp = lambda k: f"{_f(lat[k]['p50'])} / {_f(lat[k]['p99'])}" if k in lat else "—"  # noqa: E731
            tgt = FPS_TARGETS.get(_hw(row["size"]))
            met = "" if tgt is None else f"≥ {tgt:g}: {'met' if row['fps'] >= tgt else 'NOT met'}"
            L.append(f"| {row['size']} | {row['det_precision']} | **{row['fps']:.1f}** | {met} | {pp('fusion')} | "
                     f"{pp('detect')} | {pp('preprocess')} | {pp('total')} | {_f(row['load_after'][0], 2)} |")
        L += ["", "Commands: " + "; ".join(f"`{row['command']}`" for row in r["live"]), ""]
    if "detector" in r:
        L += ["## YOLOv8n on onnxruntime: INT8 vs FP32 (ms per frame, min / median)", "",
              "| frame | input | fp32 | int8 | speed-up (median) | gate |", "|---|---|---|---|---|---|"]
        for size, d in r["detector"].items():
            L.append(f"| {size} | {d['input']} | {d['ms']['fp32']['min']} / {d['ms']['fp32']['median']} | "
                     f"{d['ms']['int8']['min']} / {d['ms']['int8']['median']} | {d['speedup_median']}× | {d['gate']} |")
        L.append("")
    if "quality" in r:
        L += ["## Lite vs teacher (held-out pairs, native size, tdfusion convention)", ""]
        for set_name, q in r["quality"].items():
            t, s = q["mean"]["teacher"], q["mean"]["lite"]
            c, cm = q["lite_vs_teacher"], q["lite_vs_teacher_min"]
            L += [f"**{set_name}** ({q['pairs']} pairs)", "",
                  *_metric_table([("teacher", t), ("lite", s)], ("lite vs teacher %", q["rel_diff"], 1)), "",
                  f"PSNR lite vs teacher {c['psnr_8bit']:.2f} dB (8-bit; worst pair {cm['psnr_8bit']:.2f}), "
                  f"{c['psnr_raw']:.2f} dB raw; SSIM {c['ssim_8bit']:.4f}. PSNR ≥ 30 dB: "
                  f"{'met' if q['psnr_met'] else 'NOT met'}; Qabf/SSIM/VIF within 5 %: "
                  f"{'met' if q['band_met'] else 'NOT met'}.", ""]
    if "int8" in r:
        i8 = r["int8"]
        L += [f"## Lite INT8 vs FP32 (onnxruntime-int8 vs onnxruntime, pairs resized to {i8['size']})", ""]
        if "refused" in i8:
            L += [f"INT8 model refused by its gate: {i8['refused']}", ""]
        else:
            L += [f"Gate: {i8['gate']}; calibrated on {i8['calibration']}.", ""]
            for set_name, q in i8["sets"].items():
                a, b = q["mean"]["fp32"], q["mean"]["int8"]
                L += [f"**{set_name}** ({q['pairs']} pairs)", "",
                      *_metric_table([("fp32", a), ("int8", b)], ("int8 vs fp32 %", q["rel_diff"], 2)), "",
                      f"PSNR int8 vs fp32 {q['psnr_int8_vs_fp32_8bit']:.2f} dB (worst {q['psnr_min']:.2f}). "
                      f"Qabf/SSIM/VIF within 1 %: {'met' if q['within_1pct'] else 'NOT met'}; all 12 within 1 %: "
                      f"{'yes' if q['within_1pct_all12'] else 'no'}.", ""]
    return "\n".join(L)


def _metric_table(rows: list[tuple[str, dict]], rel: tuple[str, dict, int]) -> list[str]:
    """Markdown rows: one per (label, metric means), then the relative difference in % with ``rel[2]`` decimals."""
    from tdfusion_edge.metrics import METRIC_NAMES

    label, diff, digits = rel
    return ["| | " + " | ".join(METRIC_NAMES) + " |", "|---|" + "---|" * len(METRIC_NAMES),
            *(f"| {name} | " + " | ".join(_f(vals[m], 3) for m in METRIC_NAMES) + " |" for name, vals in rows),
            f"| {label} | " + " | ".join(f"{100 * diff.get(m, float('nan')):+.{digits}f}" for m in METRIC_NAMES) + " |"]


def training_split_folder(root: Path, dest: Path) -> list[Path]:
    """``root``'s ``train.txt`` pairs as a folder of links (ir/, vi/): INT8 calibration data from the scored
    sets' own domain that never includes a scored (val) pair. Empty when ``root`` has no train list."""
    listing = root / "train.txt"
    if not listing.is_file():
        return []
    for side in ("ir", "vi"):
        (dest / side).mkdir(parents=True, exist_ok=True)
        for stem in filter(None, (Path(s.strip()).stem for s in listing.read_text().splitlines())):
            for src in (root / side).glob(f"{stem}.*"):
                link = dest / side / src.name
                if not link.exists():
                    link.symlink_to(src.resolve())
    return [dest]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for realtime_report.json/.md and the live stats")
    p.add_argument("--smoke", action="store_true", help="a few frames and pairs at a small size (seconds; for tests)")
    p.add_argument("--sizes", default="240x320,480x640", help="live / FLOPs / detector sizes")
    p.add_argument("--frames", type=int, default=200, help="live frames per run")
    p.add_argument("--pairs", type=int, default=20, help="held-out pairs per set for the quality sections (0: all)")
    p.add_argument("--int8-size", default="240x320", help="processing size of the INT8 vs FP32 comparison")
    p.add_argument("--clip", default="0113_1714", help="M3SVD clip name")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--det-rounds", type=int, default=20, help="timed detector runs per precision and size")
    p.add_argument("--data", type=Path, default=SHARED, help="folder holding roadscene/, msrs_det/, m3svd/")
    p.add_argument("--calib-count", type=int, default=64, help="calibration pairs/frames of the lite INT8 model")
    p.add_argument("--skip", default="", help="comma list of sections to skip: flops,live,detector,quality,int8")
    args = p.parse_args(argv)
    sizes = [_hw(s) for s in args.sizes.split(",")]
    int8_hw, calib_n, gate_n = _hw(args.int8_size), args.calib_count, 4
    if args.smoke:
        sizes, int8_hw, calib_n, gate_n = [(64, 96)], (64, 96), 4, 2
        args.frames, args.pairs, args.det_rounds = min(args.frames, 12), min(args.pairs or 1, 1), 3
    m3svd = args.data / "m3svd"
    sets = {n: d for n, d in (("RoadScene", args.data / "roadscene"), ("MSRS", args.data / "msrs_det"))
            if (d / "ir").is_dir()}
    if not (m3svd / "ir" / f"{args.clip}.mp4").is_file() or not sets:
        print(f"no data: need {m3svd}/ir/{args.clip}.mp4 and roadscene/ or msrs_det/ under {args.data}", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    r = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": args.threads, "smoke": args.smoke,
         "load_before": list(os.getloadavg()),
         "machine": {"cpu": _cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
                     "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}, "commit": _commit()}

    def section(name, fn):
        if name in skip:
            return
        s = time.perf_counter()
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        r[name] = fn()
        r.setdefault("section_s", {})[name] = round(time.perf_counter() - s, 1)
        print(f"[{name}] {r['section_s'][name]} s", file=sys.stderr, flush=True)

    section("flops", lambda: measure_flops(sizes))

    def live():
        rows = []
        runs = [("fp32", []), ("int8", ["--det-precision", "int8", "--calib", str(m3svd), "--backend", "onnxruntime"])]
        for hw in sizes:
            for prec, extra in runs[:1] if args.smoke else runs:   # smoke: one subprocess
                row = run_live(m3svd, args.clip, hw, args.frames, args.threads, args.out, extra, f"det{prec}")
                rows.append({"size": _label(hw), "det_precision": prec, **row})
        return rows

    section("live", live)
    section("detector", lambda: detector_speed(sizes, m3svd, args.threads, args.det_rounds))
    section("quality", lambda: lite_vs_teacher(sets, args.pairs, args.threads))
    # Calibrate on the scored sets' own domain (MSRS night scenes differ from M3SVD video); the smoke run
    # keeps the 4-frame M3SVD set, where a 2-pair gate on dark MSRS frames is too small a sample.
    calib = [m3svd] if args.smoke else [*training_split_folder(args.data / "msrs_det", args.out / "calib_msrs_train"), m3svd]
    section("int8", lambda: int8_vs_fp32(sets, args.pairs, int8_hw, calib, args.threads, calib_n, gate_n))
    r["load_after"] = list(os.getloadavg())
    r["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "realtime_report.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    text = to_markdown(r)
    (args.out / "realtime_report.md").write_text(text + "\n")
    print(text)
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    raise SystemExit(main())
