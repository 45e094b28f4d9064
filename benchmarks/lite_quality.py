"""TDFusion-lite against its teacher on real pairs: the 12 fusion metrics side by side, PSNR/SSIM of the
lite output against the teacher's, and a montage (not a pytest test; run once).

    python benchmarks/lite_quality.py --montage docs/img/lite_vs_teacher.png

Pairs: the held-out split of the distillation (RoadScene pairs whose name hash falls in the held-out
15 %, the 60 MSRS pairs of ``msrs_det/val.txt``; none of them was trained on) and, for a larger
sample, all pairs of each set (``--split all``). Both networks run through the onnxruntime backend
and the released inference (min–max stretch, 8-bit), i.e. the images ``tdfusion-edge fuse`` writes;
metrics in the ``tdfusion`` convention on those images. PSNR/SSIM lite-vs-teacher are on the 8-bit
outputs (peak 255, scikit-image SSIM defaults) and on the raw network outputs (peak 1).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TARGET_PSNR_DB = 30.0
TARGET_REL = 0.05  # Qabf, SSIM, VIF within 5 % of the teacher's mean
GATED = ("Qabf", "SSIM", "VIF")


def _pairs(name: str, root: Path, split: str):
    from tdfusion_edge.train.distill_data import discover

    items = [it for it in discover([root], video_frames=0) if it.frame is None]
    return [it for it in items if split == "all" or it.val]


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def evaluate(sets: dict[str, Path], split: str, lite: str, teacher: str, threads: int, montage_rows: int):
    """Per set: mean metrics of teacher and lite, lite-vs-teacher PSNR/SSIM, and montage rows."""
    from skimage.metrics import structural_similarity

    from tdfusion_edge.checkpoints import default_weights_path
    from tdfusion_edge.export.backends import create_backend
    from tdfusion_edge.imaging import load_pair
    from tdfusion_edge.inference import fuse_pair
    from tdfusion_edge.metrics import METRIC_NAMES, compute_metrics, load_gray_for_metrics

    nets = {"teacher": create_backend("onnxruntime", weights=teacher if teacher != "default" else
                                      default_weights_path(), device="cpu", threads=threads),
            "lite": create_backend("onnxruntime", weights=lite, device="cpu", threads=threads)}
    results, tiles = {}, []
    for set_name, root in sets.items():
        items = _pairs(set_name, root, split)
        rows = {"teacher": [], "lite": []}
        cmp_rows = []
        ms = {"teacher": [], "lite": []}
        for i, it in enumerate(items):
            pair = load_pair(Path(it.ir_path), Path(it.vis_path), resize=True)
            ir_g, vis_g = load_gray_for_metrics(it.ir_path), load_gray_for_metrics(it.vis_path)
            if ir_g.shape != vis_g.shape:
                continue
            out = {}
            for k, backend in nets.items():
                t0 = time.perf_counter()
                raw = backend.fuse(pair.ir_y, pair.vis_y)
                ms[k].append((time.perf_counter() - t0) * 1e3)
                img = fuse_pair(backend, pair, "minmax").gray
                out[k] = (raw, img)
                rows[k].append(compute_metrics(img.astype(np.float32), ir_g, vis_g, "tdfusion"))
            (t_raw, t_img), (s_raw, s_img) = out["teacher"], out["lite"]
            cmp_rows.append({"psnr_8bit": _psnr(s_img, t_img, 255.0),
                             "ssim_8bit": float(structural_similarity(s_img, t_img, data_range=255)),
                             "psnr_raw": _psnr(s_raw, t_raw, 1.0)})
            if i < montage_rows:
                diff = np.clip(np.abs(s_img.astype(np.int16) - t_img.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
                tiles.append([("IR", np.round(ir_g).astype(np.uint8)), ("visible", np.round(vis_g).astype(np.uint8)),
                              ("teacher", t_img), ("lite", s_img), ("|lite-teacher| x4", diff)])
        mean = {k: {m: float(np.mean([r[m] for r in v])) for m in METRIC_NAMES} for k, v in rows.items()}
        cmp_mean = {k: float(np.mean([r[k] for r in cmp_rows])) for k in cmp_rows[0]}
        cmp_min = {k: float(np.min([r[k] for r in cmp_rows])) for k in cmp_rows[0]}
        results[set_name] = {"pairs": len(cmp_rows), "mean": mean, "lite_vs_teacher": cmp_mean,
                             "lite_vs_teacher_min": cmp_min,
                             "ms_median": {k: float(np.median(v)) for k, v in ms.items()}}
    return results, tiles


def to_markdown(results: dict, split: str) -> str:
    from tdfusion_edge.metrics import METRIC_NAMES

    lines = []
    for set_name, r in results.items():
        t, s = r["mean"]["teacher"], r["mean"]["lite"]
        lines += [f"**{set_name}** ({split} split, {r['pairs']} pairs; tdfusion convention, means)", "",
                  "| | " + " | ".join(METRIC_NAMES) + " |", "|---|" + "---|" * len(METRIC_NAMES),
                  "| teacher (built-in FusionNet) | " + " | ".join(f"{t[m]:.3f}" for m in METRIC_NAMES) + " |",
                  "| TDFusion-lite | " + " | ".join(f"{s[m]:.3f}" for m in METRIC_NAMES) + " |",
                  "| lite / teacher | " + " | ".join(f"{s[m] / t[m]:.3f}" if t[m] else "—" for m in METRIC_NAMES)
                  + " |", ""]
        c, cm = r["lite_vs_teacher"], r["lite_vs_teacher_min"]
        gates = ", ".join(f"{m} {100 * (s[m] / t[m] - 1):+.1f} %" for m in GATED)
        ok_psnr = c["psnr_8bit"] >= TARGET_PSNR_DB
        ok_rel = all(abs(s[m] / t[m] - 1) <= TARGET_REL for m in GATED)
        lines += [f"lite vs teacher: PSNR {c['psnr_8bit']:.2f} dB on the 8-bit outputs (worst pair "
                  f"{cm['psnr_8bit']:.2f}), {c['psnr_raw']:.2f} dB on the raw outputs; SSIM {c['ssim_8bit']:.4f}. "
                  f"Target PSNR ≥ {TARGET_PSNR_DB:.0f} dB: {'met' if ok_psnr else 'NOT met'}; "
                  f"{gates} vs teacher (target ±5 %: {'met' if ok_rel else 'NOT met'}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lite", default="lite", help="lite weights (default: the shipped ones)")
    p.add_argument("--teacher", default="default", help="teacher weights (default: the built-in FusionNet)")
    p.add_argument("--roadscene", type=Path, default=SHARED / "roadscene")
    p.add_argument("--msrs", type=Path, default=SHARED / "msrs_det")
    p.add_argument("--split", choices=("val", "all"), default="val", help="held-out pairs only (default) or all")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the markdown table here")
    p.add_argument("--json", type=Path, help="write all numbers here")
    p.add_argument("--montage", type=Path, help="write a montage PNG (two pairs per set)")
    args = p.parse_args(argv)
    sets = {n: d for n, d in (("RoadScene", args.roadscene), ("MSRS", args.msrs)) if (d / "ir").is_dir()}
    if not sets:
        print(f"no data: {args.roadscene} and {args.msrs} are missing", file=sys.stderr)
        return 2
    results, tiles = evaluate(sets, args.split, args.lite, args.teacher, args.threads, montage_rows=2)
    text = to_markdown(results, args.split)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.montage and tiles:
        import cv2

        from tdfusion_edge.montage import montage

        rows = []
        for row in tiles:  # one height per row: scale every tile to 240 px high
            h = 240
            rows.append([(n, cv2.resize(img, (round(img.shape[1] * h / img.shape[0]), h),
                                        interpolation=cv2.INTER_AREA)) for n, img in row])
        args.montage.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.montage), montage(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
