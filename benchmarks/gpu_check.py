"""One command that measures every CUDA path of the project and writes one JSON and one Markdown table.

    python benchmarks/gpu_check.py --out DIR            # on a CUDA machine, ≤ 9 minutes
    python benchmarks/gpu_check.py --out DIR --dry-run  # on a CPU, tiny sizes, seconds

Sections, each in its own process with its own time limit (a crash, a hang or a poisoned CUDA
context in one leaves the others running): ``device`` (name, versions, measured device-to-device
copy bandwidth), ``gpu_tests`` (``pytest -m gpu``), ``kernels`` (bench_kernels at its real sizes:
eager, torch.compile, Triton), ``meta`` (bench_meta_step's steps), ``inference`` (bench_inference's
CUDA backends), ``preprocess`` (kernels/cuda/preprocess.cu against its NumPy twins). The JSON is
rewritten after every section, so a run cut short still leaves what it measured.
``benchmarks/fill_gpu_table.py`` puts the tables into ``benchmarks/README.md``.

Exit status: 0 when every section finished and nothing failed, 1 otherwise, 2 on a usage error
(the project not installed; no CUDA device without ``--dry-run``: then only ``device`` runs).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:  # appended: a module name here must not shadow another one
    sys.path.append(str(BENCH_DIR))

from gpu_report import SECTIONS, write_report  # noqa: E402  (no torch: the parent stays light)

# Seconds per section on a GPU; they add up to 505 s, under the 540 s (9 minutes) the run may take.
BUDGETS = {"device": 35, "gpu_tests": 100, "kernels": 185, "meta": 75, "inference": 70, "preprocess": 40}
# The dry run's limits only catch a hang: a shared 2-core machine can be several times slower than idle.
DRY_BUDGETS = {"device": 90, "gpu_tests": 150, "kernels": 90, "meta": 150, "inference": 90, "preprocess": 90}
TOTAL_BUDGET = 525.0
SOFT_MARGIN = 0.85  # a section stops starting rows at this share of its limit, then is killed at the limit
INSTALL_HINT = "pip install --no-deps --no-build-isolation -e .   (in the repository root)"


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def child_env(dry_run: bool) -> dict:
    """Environment of every section: unbuffered; no GPU at all in the dry run."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_process(cmd: list[str], limit_s: float, env: dict, stderr_path: Path) -> tuple[int | None, float]:
    """Run ``cmd`` in its own process group; kill the whole group (compile workers too) at the limit.
    Returns (exit status or None on timeout, seconds)."""
    start = time.perf_counter()
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=None, stderr=err, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    try:  # the group may hold leftovers (torch.compile's worker pool) after a normal exit too
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return rc, time.perf_counter() - start


def run_timed_section(name: str, limit_s: float, dry_run: bool, work: Path) -> dict:
    """One section in a child process (``--section``); its rows survive a kill at the limit."""
    out_file, err_file = work / f"{name}.json", work / f"{name}.stderr"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--section-file", str(out_file),
           "--soft-budget", f"{limit_s * SOFT_MARGIN:.1f}"] + (["--dry-run"] if dry_run else [])
    rc, wall = run_process(cmd, limit_s, child_env(dry_run), err_file)
    try:
        data = json.loads(out_file.read_text())
    except (OSError, ValueError):
        data = {"rows": [], "info": {}}
    sec = {"status": data.get("status", "error"), "reason": data.get("reason"), "budget_s": limit_s,
           "wall_s": round(wall, 2), "info": data.get("info", {}), "rows": data.get("rows", [])}
    if rc is None:
        sec.update(status="timeout", reason=f"killed at its {limit_s:.0f} s limit (rows so far kept)")
    elif rc != 0 and sec["status"] == "ok":
        sec.update(status="error", reason=f"exit status {rc}")
    elif rc != 0 and not sec["reason"]:
        sec["reason"] = f"exit status {rc}"
    if sec["status"] != "ok":
        sec["stderr_tail"] = _tail(err_file)
        if data.get("traceback"):
            sec["traceback"] = data["traceback"]
        log(f"{name}: {sec['status']}: {sec['reason']}\n{sec['stderr_tail'][-800:]}")
    return sec


def gpu_test_files() -> list[str]:
    """The test modules that hold ``gpu``-marked tests (collecting only those keeps the run short)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text(errors="replace"))


def run_gpu_tests(limit_s: float, dry_run: bool, work: Path) -> dict:
    """``pytest -m gpu`` as a subprocess; one row per test from its JUnit XML."""
    xml, err_file = work / "gpu_tests.xml", work / "gpu_tests.stderr"
    files = gpu_test_files()
    if not files:
        return {"status": "skipped", "reason": "no test module has gpu-marked tests", "rows": [], "budget_s": limit_s}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append(f"--timeout={int(max(10, limit_s * 0.5))}")  # one hung test must not take the whole limit
    cmd += files
    rc, wall = run_process(cmd, limit_s, child_env(dry_run), err_file)
    rows = parse_junit(xml) if xml.is_file() else []
    sec = {"status": "ok", "reason": None, "budget_s": limit_s, "wall_s": round(wall, 2),
           "info": {"command": " ".join(["python", *cmd[1:]]).replace(str(xml), "JUNIT.xml"), "exit_status": rc,
                    "files": files}, "rows": rows}
    if rc is None:
        sec.update(status="timeout", reason=f"pytest killed at its {limit_s:.0f} s limit")
    elif rc not in (0, 1) or not xml.is_file():  # 1 = some tests failed: those are rows, not a crash
        sec.update(status="error", reason=f"pytest exit status {rc}")
    if sec["status"] != "ok":
        sec["stderr_tail"] = _tail(err_file)
    passed = sum(r["status"] == "passed" for r in rows)
    log(f"gpu_tests: {passed} passed of {len(rows)} (exit status {rc}, {wall:.0f} s)")
    return sec


def parse_junit(path: Path) -> list[dict]:
    """pytest's JUnit XML → rows: name, status (passed | failed | error | skipped), reason, seconds."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        name = f"{module}.py::{case.get('name')}" if module else case.get("name", "?")
        status, reason = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                status = {"failure": "failed"}.get(tag, tag)
                reason = (el.get("message") or el.text or "").strip()
                break
        rows.append({"name": name, "status": status, "reason": reason[:500] if reason else None,
                     "time_s": float(case.get("time", 0) or 0)})
    return rows


def device_of(sections: dict) -> dict:
    """The ``device`` block of the result from the device section's info (name even when it failed)."""
    info = dict(sections.get("device", {}).get("info", {}))
    info.setdefault("name", "unknown device (device section did not finish)")
    return info


def exit_status(result: dict) -> int:
    bad = [n for n, s in result["sections"].items() if s["status"] not in ("ok", "skipped")]
    bad += [r.get("name", n) for n, s in result["sections"].items() for r in s.get("rows", [])
            if r.get("status") in ("error", "failed")]
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU only, tiny sizes: checks the whole run in seconds")
    parser.add_argument("--only", default="", help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for the whole run (default {TOTAL_BUDGET:.0f}; sections get at most their share)")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section in this process
    parser.add_argument("--section-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--soft-budget", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.section:
        from gpu_sections import run_section
        return run_section(args.section, args.section_file, args.dry_run, args.soft_budget)
    if args.out is None:
        parser.error("--out DIR is required")
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if importlib.util.find_spec("tdfusion_edge") is None or importlib.util.find_spec("tdfusion_edge.kernels") is None:
        print(f"error: the project is not installed in this Python ({sys.executable}); run: {INSTALL_HINT}",
              file=sys.stderr)
        return 2

    budgets = DRY_BUDGETS if args.dry_run else BUDGETS
    total = args.budget if args.budget is not None else TOTAL_BUDGET
    start = time.perf_counter()
    result = {"schema": 1, "dry_run": args.dry_run, "budget_s": total, "wall_s": 0.0,
              "started_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "device": {}, "sections": {}}
    log(f"{'dry run (CPU, tiny sizes)' if args.dry_run else 'GPU run'}; sections {', '.join(only)}; "
        f"budget {total:.0f} s; results in {args.out}")
    no_gpu = False
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        for name in SECTIONS:
            if name not in only:
                result["sections"][name] = {"status": "skipped", "reason": "not selected (--only)", "rows": []}
                continue
            left = total - (time.perf_counter() - start)
            limit = min(budgets[name], left)
            if limit < 5:
                result["sections"][name] = {"status": "skipped", "reason": "the run's time budget was used up",
                                            "rows": [], "budget_s": 0}
                log(f"{name}: skipped (no time left)")
                continue
            log(f"{name}: start (limit {limit:.0f} s)")
            try:
                sec = (run_gpu_tests(limit, args.dry_run, work) if name == "gpu_tests"
                       else run_timed_section(name, limit, args.dry_run, work))
            except Exception as exc:  # noqa: BLE001 - the orchestration of one section failed: record, go on
                sec = {"status": "error", "reason": f"{type(exc).__name__}: {exc}", "rows": [], "budget_s": limit}
            result["sections"][name] = sec
            log(f"{name}: {sec['status']} in {sec.get('wall_s', 0):.1f} s, {len(sec.get('rows', []))} rows")
            result["device"] = device_of(result["sections"])
            result["wall_s"] = round(time.perf_counter() - start, 1)
            write_report(result, args.out)
            if name == "device" and not args.dry_run and sec.get("info", {}).get("kind") == "cpu":
                no_gpu = True  # real sizes on a CPU would spend the whole budget measuring nothing of interest
                break
    if no_gpu:
        for name in SECTIONS:
            result["sections"].setdefault(name, {"status": "skipped", "rows": [],
                                                 "reason": "no CUDA device here (use --dry-run on a CPU)"})
        write_report(result, args.out)
        print("error: no CUDA device here; on a CPU run with --dry-run", file=sys.stderr)
        return 2
    json_path, md_path = write_report(result, args.out)
    for t in result.get("targets", []):
        log(f"target {t['name']}: {t['measured_x'] and round(t['measured_x'], 2)}× → "
            f"{'not measured' if t['met'] is None else ('met' if t['met'] else 'NOT met')}")
    log(f"done in {result['wall_s']:.0f} s: {json_path} and {md_path}")
    return exit_status(result)


if __name__ == "__main__":
    sys.exit(main())
