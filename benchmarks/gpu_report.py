"""The GPU check's result: one JSON document and the Markdown tables rendered from it.

Pure functions on plain dicts (no torch import), shared by ``gpu_check.py`` (writes the JSON and the
Markdown into ``--out``) and ``fill_gpu_table.py`` (puts the same tables into ``benchmarks/README.md``).

Document layout (``SCHEMA`` 1)::

    {"schema": 1, "dry_run": bool, "started_utc": str, "wall_s": float, "budget_s": float,
     "device": {"name", "kind" ("cuda" | "cpu"), "torch", "cuda", "triton", "copy_gbps", ...},
     "sections": {name: {"status": "ok" | "error" | "timeout" | "skipped", "reason": str | None,
                         "budget_s", "wall_s", "info": {...}, "rows": [{"status": "ok" | "skipped" |
                         "error" | "failed", "reason": str | None, ...}]}},
     "targets": [{"name", "required_x", "measured_x" | None, "met": bool | None}]}
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

SCHEMA = 1
JSON_NAME = "gpu_check.json"
MD_NAME = "gpu_check.md"
SECTIONS = ("device", "gpu_tests", "kernels", "meta", "inference", "preprocess")
KERNEL_LABELS = {"fusion_loss": "fusion loss", "mdta": "MDTA", "layernorm": "LayerNorm"}
# The kernels' speed targets: (kernel, pass, required speed-up of triton over eager).
TARGETS = (("fusion_loss", "meta", 5.0), ("mdta", "fwd_bwd", 3.0))


# -- computed fields ------------------------------------------------------------------------------
def kernel_groups(result: dict) -> dict[tuple[str, str, str], dict[str, dict]]:
    """(kernel, size, pass) → impl → row, in measurement order of the first row of each group."""
    groups: dict[tuple[str, str, str], dict[str, dict]] = {}
    for row in section(result, "kernels").get("rows", []):
        groups.setdefault((row["kernel"], row["size"], row["pass"]), {})[row["impl"]] = row
    return groups


def speedup(base: dict | None, row: dict | None, key: str = "mean_ms") -> float | None:
    """base time / row time where both rows were measured, else None."""
    if not base or not row or base.get("status") != "ok" or row.get("status") != "ok":
        return None
    a, b = base.get(key), row.get(key)
    return a / b if a and b else None


def add_derived(result: dict) -> dict:
    """Fill the fields computed from other rows: % of copy bandwidth, ratios over eager, targets."""
    copy = result.get("device", {}).get("copy_gbps")
    for name, sec in result.get("sections", {}).items():
        for row in sec.get("rows", []):
            if row.get("gbps") and copy:
                row["pct_copy"] = 100.0 * row["gbps"] / copy
    for impls in kernel_groups(result).values():
        for impl, row in impls.items():
            if impl != "eager":
                row["vs_eager"] = speedup(impls.get("eager"), row)
    inf = section(result, "inference")
    base_name = inf.get("info", {}).get("baseline")
    base = {r["size"]: r for r in inf.get("rows", []) if r.get("backend") == base_name}
    for row in inf.get("rows", []):
        if row.get("backend") != base_name:
            row["vs_baseline"] = speedup(base.get(row["size"]), row, "median_ms")
    result["targets"] = targets(result)
    return result


def targets(result: dict) -> list[dict]:
    """The kernels' speed targets against the measured rows (``met`` None where not measured)."""
    out = []
    for kernel, mode, need in TARGETS:
        for (k, size, p), impls in kernel_groups(result).items():
            if k != kernel or p != mode:
                continue
            x = speedup(impls.get("eager"), impls.get("triton"))
            out.append({"name": f"{KERNEL_LABELS[kernel]} {size} {mode}: triton ≥ {need:g}× eager",
                        "required_x": need, "measured_x": x, "met": None if x is None else x >= need,
                        "device": result.get("device", {}).get("name")})
    return out


def section(result: dict, name: str) -> dict:
    return result.get("sections", {}).get(name) or {}


# -- writing --------------------------------------------------------------------------------------
def write_report(result: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``gpu_check.json`` and ``gpu_check.md`` into ``out_dir`` (atomically); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    add_derived(result)
    paths = out / JSON_NAME, out / MD_NAME
    for path, text in zip(paths, (json.dumps(result, indent=1, default=_json_default) + "\n",
                                  render_markdown(result))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return paths


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def load_result(path: str | os.PathLike) -> dict:
    """Read a GPU-check JSON, checking that it is one."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or "sections" not in data:
        raise ValueError(f"{path} is not a gpu_check.py result (schema {SCHEMA})")
    return data


# -- Markdown -------------------------------------------------------------------------------------
def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def _x(value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _why(row: dict | None) -> str:
    if not row:
        return "not run"
    return f"{row.get('status')}: {row.get('reason') or 'no reason recorded'}"


def device_line(result: dict) -> str:
    """One line naming what the numbers were measured on."""
    d = result.get("device", {})
    parts = [f"**{d.get('name', 'unknown device')}**"]
    for key, label in (("torch", "torch"), ("cuda", "CUDA"), ("triton", "Triton"), ("driver", "driver")):
        if d.get(key):
            parts.append(f"{label} {d[key]}")
    if d.get("copy_gbps"):
        parts.append(f"measured device copy {d['copy_gbps']:.0f} GB/s (bytes read + written)")
    if result.get("dry_run"):
        parts.append("DRY RUN (CPU, tiny sizes: not a measurement)")
    return "Measured on " + ", ".join(parts) + f"; `benchmarks/gpu_check.py`, {result.get('started_utc', '?')}."


def section_status(result: dict, name: str) -> str | None:
    """A line when a section did not finish normally (else None)."""
    sec = section(result, name)
    if not sec:
        return f"Section `{name}` not run."
    if sec.get("status") != "ok":
        return f"Section `{name}` {sec.get('status')}: {sec.get('reason') or 'no reason recorded'}."
    return None


def kernels_table(result: dict) -> list[str]:
    """Per kernel, size and pass: eager, torch.compile and Triton times and the ratios over eager."""
    dev = result.get("device", {}).get("name", "?")
    lines = ["| device | kernel | size | pass | eager ms | compile ms (×) | triton ms (×) | "
             "triton GB/s (% of copy) |", "|---|---|---|---|---|---|---|---|"]
    for (kernel, size, mode), impls in kernel_groups(result).items():
        cells = []
        for impl in ("eager", "compile", "triton"):
            row = impls.get(impl)
            if row and row.get("status") == "ok":
                t = _f(row.get("mean_ms"))
                cells.append(t if impl == "eager" else f"{t} ({_x(row.get('vs_eager'))})")
            else:
                cells.append(_why(row))
        tri = impls.get("triton")
        if tri and tri.get("status") == "ok" and tri.get("gbps"):
            pct = tri.get("pct_copy")
            cells.append(f"{_f(tri['gbps'])} ({pct:.0f} %)" if pct is not None else _f(tri["gbps"]))
        else:
            cells.append("—")
        lines.append(f"| {dev} | {KERNEL_LABELS.get(kernel, kernel)} | {size} | {mode} | " + " | ".join(cells) + " |")
    return lines


def targets_lines(result: dict) -> list[str]:
    lines = []
    for t in result.get("targets") or targets(result):
        verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
        lines.append(f"- {t['name']}: {_x(t['measured_x'])} — {verdict}")
    return lines


def inference_table(result: dict) -> list[str]:
    """Backends × sizes: median ms of one ``fuse`` call (host copies included) and speed-up over the baseline."""
    rows = section(result, "inference").get("rows", [])
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    names = list(dict.fromkeys(r["backend"] for r in rows))
    by = {(r["backend"], r["size"]): r for r in rows}
    dev = result.get("device", {}).get("name", "?")
    lines = ["| device | backend | " + " | ".join(f"{s} median ms (× baseline)" for s in sizes)
             + " | max abs diff vs baseline |", "|---|---|" + "---|" * (len(sizes) + 1)]
    for name in names:
        cells, diffs = [], []
        for s in sizes:
            r = by.get((name, s))
            if r and r.get("status") == "ok":
                x = r.get("vs_baseline")
                cells.append(f"{_f(r.get('median_ms'))}" + (f" ({_x(x)})" if x is not None else ""))
                if r.get("max_abs_diff") is not None:
                    diffs.append(r["max_abs_diff"])
            else:
                cells.append(_why(r))
        diff = f"{max(diffs):.2g}" if diffs else "—"
        lines.append(f"| {dev} | {name} | " + " | ".join(cells) + f" | {diff} |")
    info = section(result, "inference").get("info", {})
    if info.get("weights"):
        lines += ["", f"Weights: {info['weights']}; baseline: {info.get('baseline', '?')}."]
    return lines


def preprocess_table(result: dict) -> list[str]:
    """Each CUDA pre-processing kernel against its NumPy twin: time and bit-equality."""
    rows = section(result, "preprocess").get("rows", [])
    dev = result.get("device", {}).get("name", "?")
    lines = ["| device | kernel | size | NumPy twin ms | CUDA ms (×) | equal to twin |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") == "ok":
            gpu = f"{_f(r.get('gpu_ms'))} ({_x(r.get('vs_numpy'))})"
            eq = "yes" if r.get("equal") else f"NO (max abs diff {r.get('max_abs_diff')})"
        else:
            gpu, eq = _why(r), "—"
        lines.append(f"| {dev} | {r['kernel']} | {r['size']} | {_f(r.get('numpy_ms'))} | {gpu} | {eq} |")
    info = section(result, "preprocess").get("info", {})
    if info.get("runtime"):
        lines += ["", f"CUDA runtime: {info['runtime']}; CUDA times are host in → host out (uploads and "
                      "downloads included), as the live app calls them."]
    return lines


def meta_table(result: dict) -> list[str]:
    """Meta step and fusion step at the given sizes: seconds per step and peak memory."""
    sec = section(result, "meta")
    rows = sec.get("rows", [])
    dev = result.get("device", {}).get("name", "?")
    mem = "GPU" if result.get("device", {}).get("kind") == "cuda" else "RSS"
    lines = [f"| device | step | kernels | s/step min | s/step median | peak {mem} MiB (+ over before) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") == "ok":
            peak, base = r.get("peak_mib"), r.get("base_mib")
            grow = f" (+{peak - base:.0f})" if peak is not None and base is not None else ""
            lines.append(f"| {dev} | {r['name']} | {r.get('kernels', '—')} | {_f(r.get('min_s'))} | "
                         f"{_f(r.get('median_s'))} | {_f(peak)}{grow} |")
        else:
            lines.append(f"| {dev} | {r['name']} | {r.get('kernels', '—')} | {_why(r)} | | |")
    by = {r["name"]: r for r in rows}
    ours, theirs = by.get("meta step, functional"), by.get("meta step, released style (T via disk)")
    x = speedup(theirs, ours, "median_s")
    if x is not None:
        lines += ["", f"Released-style / functional meta step (median): {x:.2f}×."]
    if sec.get("info", {}).get("sizes"):
        lines += ["", f"Sizes: {sec['info']['sizes']}."]
    return lines


def tests_table(result: dict) -> list[str]:
    """``pytest -m gpu``: the counts, then every test that did not pass."""
    sec = section(result, "gpu_tests")
    rows = sec.get("rows", [])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    dev = result.get("device", {}).get("name", "?")
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no tests ran"
    lines = [f"`pytest -m gpu` on {dev}: {summary} ({_f(sec.get('wall_s'))} s)."]
    bad = [r for r in rows if r["status"] != "passed"]
    if bad:
        lines += ["", "| test | outcome | message |", "|---|---|---|"]
        for r in bad:
            msg = (r.get("reason") or "").replace("|", "\\|").replace("\n", " ")[:160]
            lines.append(f"| `{r['name']}` | {r['status']} | {msg} |")
    return lines


TABLES = {"kernels": kernels_table, "inference": inference_table, "preprocess": preprocess_table,
          "meta": meta_table, "gpu_tests": tests_table}


def block(result: dict, name: str, with_device: bool = True) -> list[str]:
    """One README/Markdown block: the device line, the section's status if not ok, its table."""
    lines = [device_line(result), ""] if with_device else []
    status = section_status(result, name)
    if status:
        lines += [status, ""]
    lines += TABLES[name](result)
    if name == "kernels" and (result.get("targets") or targets(result)):
        lines += ["", "Targets (same run):", *targets_lines(result)]
    return lines


def render_markdown(result: dict) -> str:
    """The whole report: device, sections' wall times and statuses, every table."""
    lines = ["# GPU check", "", device_line(result), "",
             "| section | status | wall s | budget s | rows ok / skipped / other |", "|---|---|---|---|---|"]
    for name in SECTIONS:
        sec = section(result, name)
        rows = sec.get("rows", [])
        ok = sum(r.get("status") in ("ok", "passed") for r in rows)
        sk = sum(r.get("status") == "skipped" for r in rows)
        status = sec.get("status", "not run")
        if sec.get("reason") and status != "ok":
            status += f": {sec['reason']}"
        lines.append(f"| {name} | {status} | {_f(sec.get('wall_s'))} | {_f(sec.get('budget_s'))} | "
                     f"{ok} / {sk} / {len(rows) - ok - sk} |")
    titles = {"gpu_tests": "GPU-marked tests", "kernels": "Kernels (eager, torch.compile, Triton)",
              "meta": "Meta step and fusion step", "inference": "Inference (fuse call, per backend)",
              "preprocess": "CUDA pre-processing kernels against their NumPy twins"}
    for name, title in titles.items():
        lines += ["", f"## {title}", "", *block(result, name, with_device=False)]
    return "\n".join(lines) + "\n"
