"""benchmarks/gpu_check.py and fill_gpu_table.py on a CPU: the report writer, the README filler on a
synthetic GPU result, the process-group kill at a section's limit, and the whole --dry-run as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
if str(BENCH) not in sys.path:  # appended: a module name here must not shadow another one
    sys.path.append(str(BENCH))

import fill_gpu_table  # noqa: E402
import gpu_check  # noqa: E402
import gpu_report  # noqa: E402

DEVICE = "NVIDIA H200 (synthetic test result)"


def _kernel_rows(kernel, size, mode, eager_ms, triton_ms, compile_ms=None):
    rows = [{"kernel": kernel, "size": size, "pass": mode, "impl": "eager", "status": "ok", "reason": None,
             "mean_ms": eager_ms, "median_ms": eager_ms, "bytes": 4e6, "gbps": 4e6 / (eager_ms * 1e-3) / 1e9},
            {"kernel": kernel, "size": size, "pass": mode, "impl": "triton", "status": "ok", "reason": None,
             "mean_ms": triton_ms, "median_ms": triton_ms, "bytes": 4e6, "gbps": 4e6 / (triton_ms * 1e-3) / 1e9}]
    if compile_ms is None:
        rows.append({"kernel": kernel, "size": size, "pass": mode, "impl": "compile", "status": "skipped",
                     "reason": "torch.compile has no double backward"})
    else:
        rows.append({"kernel": kernel, "size": size, "pass": mode, "impl": "compile", "status": "ok",
                     "reason": None, "mean_ms": compile_ms, "median_ms": compile_ms})
    return rows


def synthetic_result() -> dict:
    """A GPU run's JSON as gpu_check.py writes it, with chosen numbers."""
    ok = {"status": "ok", "reason": None, "budget_s": 60, "wall_s": 1.0}
    return {
        "schema": 1, "dry_run": False, "started_utc": "2026-12-01 00:00 UTC", "wall_s": 300.0, "budget_s": 525,
        "device": {"name": DEVICE, "kind": "cuda", "torch": "2.11.0", "cuda": "13.0", "triton": "3.6.0",
                   "copy_gbps": 4000.0},
        "sections": {
            "device": {**ok, "rows": [{"name": "copy", "status": "ok", "reason": None, "gbps": 4000.0}]},
            "gpu_tests": {**ok, "rows": [
                {"name": "tests/test_a.py::test_x", "status": "passed", "reason": None},
                {"name": "tests/test_tasks.py::test_task_on_cuda_second_order[det]", "status": "failed",
                 "reason": "ModuleNotFoundError: No module named 'ultralytics'"}]},
            "kernels": {**ok, "rows": _kernel_rows("fusion_loss", "2×256×256", "meta", 10.0, 1.0)
                        + _kernel_rows("mdta", "w16 2×256×256", "fwd_bwd", 2.0, 1.0, compile_ms=1.6)},
            "meta": {**ok, "info": {"sizes": "released"}, "rows": [
                {"name": "meta step, functional", "kernels": "triton", "status": "ok", "reason": None,
                 "min_s": 0.1, "median_s": 0.12, "peak_mib": 900.0, "base_mib": 100.0},
                {"name": "meta step, released style (T via disk)", "kernels": "auto (triton)", "status": "ok",
                 "reason": None, "min_s": 0.2, "median_s": 0.24, "peak_mib": 1200.0, "base_mib": 100.0}]},
            "inference": {**ok, "info": {"baseline": "released-eager-cuda", "weights": "random init"}, "rows": [
                {"backend": "released-eager-cuda", "size": "256×256", "status": "ok", "reason": None,
                 "median_ms": 8.0, "min_ms": 7.5, "max_abs_diff": 0.0},
                {"backend": "torch-cuda-fp16-graphs", "size": "256×256", "status": "ok", "reason": None,
                 "median_ms": 2.0, "min_ms": 1.9, "max_abs_diff": 1e-3},
                {"backend": "onnxruntime-cuda-fp32", "size": "256×256", "status": "skipped",
                 "reason": "BackendUnavailable: onnxruntime has no CUDA provider here"}]},
            "preprocess": {"status": "timeout", "reason": "killed at its 40 s limit (rows so far kept)",
                           "budget_s": 40, "wall_s": 40.0, "info": {"runtime": "cuda (cupy)"}, "rows": [
                {"kernel": "luma_gray8", "size": "1080×1920", "status": "ok", "reason": None, "numpy_ms": 4.0,
                 "gpu_ms": 1.0, "vs_numpy": 4.0, "equal": True, "max_abs_diff": 0.0}]},
        },
    }


def test_report_writer_derives_ratios_targets_and_writes_json_and_markdown(tmp_path):
    json_path, md_path = gpu_report.write_report(synthetic_result(), tmp_path / "out")
    data = json.loads(json_path.read_text())
    assert gpu_report.load_result(json_path)["device"]["name"] == DEVICE
    rows = {(r["kernel"], r["impl"]): r for r in data["sections"]["kernels"]["rows"]}
    assert rows[("fusion_loss", "triton")]["vs_eager"] == pytest.approx(10.0)
    assert rows[("mdta", "compile")]["vs_eager"] == pytest.approx(2.0 / 1.6)
    assert rows[("fusion_loss", "triton")]["pct_copy"] == pytest.approx(100 * 4.0 / 4000.0)  # 4 GB/s of 4000
    targets = {t["name"].split(":")[0]: t for t in data["targets"]}
    assert targets["fusion loss 2×256×256 meta"]["met"] is True            # 10× ≥ 5×
    assert targets["MDTA w16 2×256×256 fwd_bwd"]["met"] is False            # 2× < 3×
    inf = {r["backend"]: r for r in data["sections"]["inference"]["rows"]}
    assert inf["torch-cuda-fp16-graphs"]["vs_baseline"] == pytest.approx(4.0)
    md = md_path.read_text()
    assert md.startswith("# GPU check") and DEVICE in md
    assert f"| {DEVICE} | fusion loss | 2×256×256 | meta | 10 | skipped: torch.compile has no double backward | " \
           f"1 (10.00×) | 4 (0 %) |" in md
    assert "| preprocess | timeout: killed at its 40 s limit (rows so far kept) |" in md
    assert "skipped: BackendUnavailable: onnxruntime has no CUDA provider here" in md
    assert "fusion loss 2×256×256 meta: triton ≥ 5× eager: 10.00× — met" in md
    assert "MDTA w16 2×256×256 fwd_bwd: triton ≥ 3× eager: 2.00× — NOT met" in md
    assert "Released-style / functional meta step (median): 2.00×." in md
    assert "ModuleNotFoundError: No module named 'ultralytics'" in md
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_fill_replaces_only_the_marked_blocks_and_is_idempotent():
    readme = (BENCH / "README.md").read_text()
    for name in fill_gpu_table.BLOCKS:
        assert readme.count(fill_gpu_table.markers(name)[0]) == 1, name
    result = synthetic_result()
    once = fill_gpu_table.fill(readme, result)
    assert fill_gpu_table.fill(once, synthetic_result()) == once
    assert once.count(DEVICE) >= 5
    kernels = once.split("<!-- gpu-check:kernels:begin -->")[1].split("<!-- gpu-check:kernels:end -->")[0]
    assert "not measured: no GPU in this session" not in kernels and "| fusion loss | 2×256×256 | meta |" in kernels
    tests = once.split("<!-- gpu-check:gpu_tests:begin -->")[1].split("<!-- gpu-check:gpu_tests:end -->")[0]
    assert "1 failed, 1 passed" in tests
    assert "Section `preprocess` timeout" in once

    def outside(text):  # the README with every block's body removed
        for name in fill_gpu_table.BLOCKS:
            begin, end = fill_gpu_table.markers(name)
            head, rest = text.split(begin)
            text = head + begin + end + rest.split(end, 1)[1]
        return text
    assert outside(once) == outside(readme)

    partial = synthetic_result()
    partial["sections"]["meta"] = {"status": "skipped", "reason": fill_gpu_table.NOT_SELECTED, "rows": []}
    kept = fill_gpu_table.fill(readme, partial)
    meta = lambda t: t.split("<!-- gpu-check:meta:begin -->")[1].split("<!-- gpu-check:meta:end -->")[0]  # noqa: E731
    assert meta(kept) == meta(readme)
    with pytest.raises(ValueError, match="no gpu-check markers"):
        fill_gpu_table.fill("# README without markers\n", synthetic_result())


def test_process_limit_kills_the_whole_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    start = time.perf_counter()
    rc, wall = gpu_check.run_process([sys.executable, "-c", code], 3.0, dict(os.environ), tmp_path / "err")
    assert rc is None and wall < 10 and time.perf_counter() - start < 15
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")
    for _ in range(50):  # gone, or a zombie waiting for init to reap it
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                break
        except OSError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the section's own child outlived the limit")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-dry")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(out), "--dry-run"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    return proc, out, time.perf_counter() - start


def test_dry_run_end_to_end(dry_run):
    proc, out, wall = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]
    data = gpu_report.load_result(out / "gpu_check.json")
    assert data["dry_run"] is True and data["device"]["kind"] == "cpu" and data["device"]["copy_gbps"] > 0
    assert set(data["sections"]) == set(gpu_report.SECTIONS)
    assert {n: s["status"] for n, s in data["sections"].items()} == {n: "ok" for n in gpu_report.SECTIONS}
    assert "[gpu_check" in proc.stdout and "done in" in proc.stdout  # progress printed as it goes

    kernels = data["sections"]["kernels"]["rows"]
    by = {(r["kernel"], r["pass"], r["impl"]): r for r in kernels}
    assert len(by) == 3 * 3 * 3  # fusion loss, one MDTA and one LayerNorm case, 3 passes, 3 impls
    for (kernel, mode, impl), r in by.items():
        if impl == "eager":
            assert r["status"] == "ok" and r["mean_ms"] > 0 and r["gbps"] > 0 and r["pct_copy"] > 0
        elif impl == "compile" and mode == "meta":
            assert r["status"] == "skipped" and "double backward" in r["reason"]
        else:
            assert r["status"] == "skipped" and "needs CUDA" in r["reason"]
    assert {t["met"] for t in data["targets"]} == {None} and len(data["targets"]) == 2

    meta = {(r["name"], r["kernels"]): r for r in data["sections"]["meta"]["rows"]}
    assert meta[("meta step, functional", "triton")]["status"] == "skipped"
    for key in [("meta step, functional", "reference"), ("meta step, released style (T via disk)", "auto (reference)"),
                ("fusion step", "auto (reference)")]:
        assert meta[key]["status"] == "ok" and meta[key]["median_s"] > 0, key

    inference = data["sections"]["inference"]["rows"]
    assert {r["status"] for r in inference if r["backend"] == "released-eager"} == {"ok"}
    cuda_rows = [r for r in inference if "cuda" in r["backend"] or r["backend"].startswith("tensorrt")]
    assert len(cuda_rows) == 8 * 2 and all(r["status"] == "skipped" and "needs CUDA" in r["reason"] for r in cuda_rows)

    pre = data["sections"]["preprocess"]["rows"]
    assert len(pre) == 10 and all(r["status"] == "skipped" and r["numpy_ms"] > 0 for r in pre)

    tests = data["sections"]["gpu_tests"]["rows"]
    assert tests and all(r["status"] == "skipped" for r in tests)  # every gpu-marked test skips without CUDA
    assert any("test_kernels_mdta.py::" in r["name"] for r in tests)

    md = (out / "gpu_check.md").read_text()
    assert "DRY RUN" in md and "## Kernels (eager, torch.compile, Triton)" in md


def test_fill_refuses_a_dry_run_unless_asked(dry_run, tmp_path):
    _, out, _ = dry_run
    readme = tmp_path / "README.md"
    readme.write_text((BENCH / "README.md").read_text())
    cmd = [sys.executable, str(BENCH / "fill_gpu_table.py"), str(out / "gpu_check.json"), "--readme", str(readme)]
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and "dry run" in refused.stderr
    assert readme.read_text() == (BENCH / "README.md").read_text()
    first = subprocess.run(cmd + ["--allow-dry-run"], capture_output=True, text=True)
    assert first.returncode == 0 and "filled" in first.stdout, first.stderr
    filled = readme.read_text()
    assert "DRY RUN" in filled and "CPU:" in filled
    again = subprocess.run(cmd + ["--allow-dry-run"], capture_output=True, text=True)
    assert again.returncode == 0 and "already up to date" in again.stdout and readme.read_text() == filled


def test_fill_cli_on_a_synthetic_gpu_result(tmp_path):
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(synthetic_result()))
    readme = tmp_path / "README.md"
    readme.write_text((BENCH / "README.md").read_text())
    proc = subprocess.run([sys.executable, str(BENCH / "fill_gpu_table.py"), str(path), "--readme", str(readme)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and DEVICE in proc.stdout, proc.stderr
    assert f"| {DEVICE} | torch-cuda-fp16-graphs | 2 (4.00×) | 0.001 |" in readme.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    proc = subprocess.run([sys.executable, str(BENCH / "fill_gpu_table.py"), str(bad), "--readme", str(readme)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not a gpu_check.py result" in proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without CUDA")
def test_real_run_without_cuda_stops_after_the_device_section(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path), "--only", "device,kernels"],
                          cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "error: no CUDA device here" in proc.stderr
    data = gpu_report.load_result(tmp_path / "gpu_check.json")
    assert data["sections"]["device"]["status"] == "ok" and data["device"]["kind"] == "cpu"
    assert data["sections"]["kernels"] == {"status": "skipped", "rows": [],
                                           "reason": "no CUDA device here (use --dry-run on a CPU)"}
