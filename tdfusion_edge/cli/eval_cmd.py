"""``tdfusion-edge eval``: fusion metrics of a folder of fused images against their IR/VIS sources."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.metrics import CONVENTIONS, compute_metrics_conventions, load_gray_for_metrics, resolve_metric_names
from tdfusion_edge.metrics.table import format_table, mean_row, write_csv, write_json
from tdfusion_edge.validation.image import (IMAGE_EXTENSIONS, ImageTooLarge, check_distinct_inputs, index_images,
                                            max_pixels)
from tdfusion_edge.validation.output_path import check_output_file

from .common import add_command, existing_dir

IMAGE_SUFFIXES = set(IMAGE_EXTENSIONS)
# Long skip lists bury the table; past this many only a count is printed.
MAX_SKIPS_SHOWN = 20


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "eval",
                    "compute fusion metrics (EN, SF, SCD, VIF, Qabf, SSIM, ...) of fused images against their sources",
                    "tdfusion-edge eval --ir data/ir --vis data/vi --fused out/fused --convention both --csv m.csv")
    p.add_argument("--ir", required=True, help="folder of infrared source images")
    p.add_argument("--vis", required=True, help="folder of visible source images")
    p.add_argument("--fused", required=True, help="folder of fused images, matched to the sources by file stem")
    p.add_argument("--convention", choices=[*CONVENTIONS, "both"], default="both",
                   help="evaluator convention: tdfusion (TDFusion's tables), cddfuse, or both (default)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated subset, e.g. EN,SF,SCD,VIF,Qabf,SSIM (default: all twelve)")
    p.add_argument("--csv", default=None, help="also write per-image values and means to this CSV file")
    p.add_argument("--json", default=None, help="also write per-image values, means and skips to this JSON file")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="skip images larger than this many pixels, read from the header before decoding "
                        "(default 40e6 or $TDFUSION_EDGE_MAX_PIXELS)")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Skip:
    name: str
    reason: str


def _index(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Image files of a folder by stem (one shared index for every command), and the stems several files share."""
    index = index_images(folder, tuple(IMAGE_SUFFIXES))
    # A shared stem is ambiguous: keep one entry so the skip is reported (not a "missing source").
    by_stem = {**index.by_stem, **{stem: paths[0] for stem, paths in index.duplicates.items()}}
    return by_stem, index.duplicates


def _load_triple(fused: Path, ir: Path, vis: Path, limit: int | None = None) -> list[np.ndarray] | str:
    """The three gray images, or the reason to skip them (first unreadable file, or differing sizes)."""
    images = []
    for role, path in (("fused", fused), ("ir", ir), ("vis", vis)):
        try:
            images.append(load_gray_for_metrics(path, limit))
        except ValueError as exc:
            if isinstance(getattr(exc, "cause", None), ImageTooLarge):
                return f"{role}: {exc.cause}"
            return f"unreadable {role} image {path.name}"
    shapes = [im.shape for im in images]
    if len(set(shapes)) > 1:
        sizes = ", ".join(f"{role} {h}x{w}" for role, (h, w) in zip(("fused", "ir", "vis"), shapes))
        return f"size mismatch: {sizes}"
    return images


def _parse_metrics(text: str | None) -> list[str]:
    try:
        return resolve_metric_names(None if text is None else [t for t in text.split(",") if t.strip()])
    except ValueError as exc:
        raise TDFusionError(str(exc)) from None


def _evaluate(fused: dict[str, Path], ir: dict[str, Path], vis: dict[str, Path],
              clashes: dict[str, dict[str, list[Path]]], conventions: list[str], names: list[str],
              limit: int | None = None) -> tuple[dict[str, dict[str, dict[str, float]]], list[Skip]]:
    """Per-convention per-image values of every fused image that forms a good triple, and the skips."""
    results: dict[str, dict[str, dict[str, float]]] = {c: {} for c in conventions}
    skips: list[Skip] = []
    for stem in tqdm(sorted(fused), desc="eval", unit="img", file=sys.stderr):
        missing = [role for role, index in (("ir", ir), ("vis", vis)) if stem not in index]
        if missing:
            skips.append(Skip(stem, f"no {' or '.join(missing)} source with this name"))
            continue
        clash = [f"{role} ({', '.join(p.name for p in stems[stem])})" for role, stems in clashes.items()
                 if stem in stems]
        if clash:
            skips.append(Skip(stem, f"ambiguous: several files share this name in {'; '.join(clash)}"))
            continue
        loaded = _load_triple(fused[stem], ir[stem], vis[stem], limit)
        if isinstance(loaded, str):
            skips.append(Skip(stem, loaded))
            continue
        try:
            values = compute_metrics_conventions(*loaded, conventions=conventions, metrics=names)
        except Exception as exc:  # one bad triple must never abort a dataset run
            skips.append(Skip(stem, f"metrics failed: {exc}"))
            continue
        for conv in conventions:
            results[conv][stem] = values[conv]
    return results, skips


def run(args) -> int:
    names = _parse_metrics(args.metrics)
    conventions = list(CONVENTIONS) if args.convention == "both" else [args.convention]
    ir_dir, vis_dir, fused_dir = (existing_dir(args.ir, "--ir"), existing_dir(args.vis, "--vis"),
                                  existing_dir(args.fused, "--fused"))
    check_distinct_inputs([("--ir", ir_dir), ("--vis", vis_dir)])
    limit = max_pixels(args.max_pixels)
    inputs = [("--ir", ir_dir), ("--vis", vis_dir), ("--fused", fused_dir)]
    for flag, target in (("--csv", args.csv), ("--json", args.json)):
        if target:  # checked before the (long) evaluation, so a bad path fails in a second, not after it
            check_output_file(target, inputs, flag, tuple(IMAGE_SUFFIXES))
    (ir, ir_clash), (vis, vis_clash), (fused, fused_clash) = _index(ir_dir), _index(vis_dir), _index(fused_dir)
    if not fused:
        raise TDFusionError(f"no images found in --fused folder {fused_dir}")
    clashes = {"fused": fused_clash, "ir": ir_clash, "vis": vis_clash}
    results, skips = _evaluate(fused, ir, vis, clashes, conventions, names, limit)

    evaluated = len(results[conventions[0]])
    means = {conv: mean_row(rows, names) for conv, rows in results.items()}
    if evaluated:
        for conv in conventions:
            print(format_table(results[conv], names, means[conv], title=f"convention: {conv}"))
            print()
    print(f"evaluated {evaluated} of {len(fused)} fused images; skipped {len(skips)}")
    for skip in skips[:MAX_SKIPS_SHOWN]:
        print(f"  skipped {skip.name}: {skip.reason}")
    if len(skips) > MAX_SKIPS_SHOWN:
        print(f"  ... and {len(skips) - MAX_SKIPS_SHOWN} more")
    unfused = len((set(ir) & set(vis)) - set(fused))
    if unfused:
        print(f"note: {unfused} IR/VIS pairs have no fused image (not evaluated)")
    if not evaluated:
        raise TDFusionError(f"nothing could be evaluated ({len(skips)} skipped)")

    if args.csv:
        _write(write_csv, args.csv, results, names)
    if args.json:
        per_convention = {c: {"mean": means[c], "per_image": results[c]} for c in conventions}
        payload = {"metrics": names, "conventions": per_convention, "evaluated": evaluated,
                   "skipped": [{"name": s.name, "reason": s.reason} for s in skips]}
        _write(write_json, args.json, payload)
    return 0


def _write(writer, path: str, *payload) -> None:
    try:
        writer(path, *payload)
    except OSError as exc:
        raise TDFusionError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"wrote {path}")
