"""Per-image metric tables: aligned text, mean row, CSV and JSON."""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from tdfusion_edge.validation.output_path import atomic_write_text

Rows = Mapping[str, Mapping[str, float]]  # image name → {metric: value}


def mean_row(rows: Rows, names: Sequence[str]) -> dict[str, float]:
    """Per-metric mean over images, skipping non-finite values (NaN if none is finite)."""
    out: dict[str, float] = {}
    for n in names:
        vals = [float(r[n]) for r in rows.values() if n in r and math.isfinite(float(r[n]))]
        out[n] = math.fsum(vals) / len(vals) if vals else float("nan")
    return out


def _fmt(value: float, digits: int) -> str:
    v = float(value)
    return f"{v:.{digits}f}" if math.isfinite(v) else str(v)


def format_table(rows: Rows, names: Sequence[str], mean: Mapping[str, float] | None = None,
                 title: str | None = None, digits: int = 4) -> str:
    """Aligned text table: one line per image, then a 'mean' line; right-aligned numbers."""
    header = ["image", *names]
    body = [[name, *(_fmt(r.get(n, float("nan")), digits) for n in names)] for name, r in rows.items()]
    footer = [["mean", *(_fmt(mean[n], digits) for n in names)]] if mean is not None else []
    widths = [max(len(line[i]) for line in [header, *body, *footer]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    rule = "-" * len(render(header))
    lines = ([title] if title else []) + [render(header), rule] + [render(c) for c in body]
    if footer:
        lines += [rule, render(footer[0])]
    return "\n".join(lines)


def write_csv(path: str | Path, results: Mapping[str, Rows], names: Sequence[str]) -> None:
    """CSV with columns image, convention, metrics…; a 'mean' row closes each convention."""
    fh = io.StringIO(newline="")
    writer = csv.writer(fh)
    writer.writerow(["image", "convention", *names])
    for conv, rows in results.items():
        for image, r in rows.items():
            writer.writerow([image, conv, *(repr(float(r[n])) for n in names)])
        mean = mean_row(rows, names)
        writer.writerow(["mean", conv, *(repr(mean[n]) for n in names)])
    atomic_write_text(path, fh.getvalue())  # complete or absent: never a truncated table


def _json_safe(obj):
    """Replace NaN/inf (not valid JSON) by null, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: str | Path, payload: Mapping) -> None:
    """Write ``payload`` as indented JSON; non-finite numbers become null."""
    atomic_write_text(path, json.dumps(_json_safe(payload), indent=2) + "\n")
