"""``benchmarks/realtime_report.py --smoke`` as a user runs it: one command, every section measured on the
real data (a few frames and pairs at a small size), a JSON and a Markdown table written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "m3svd" / "ir" / "0113_1714.mp4").is_file()
                    or not (DATA / "roadscene" / "ir").is_dir() or not (DATA / "msrs_det" / "ir").is_dir(),
                    reason="../shared/data (m3svd, roadscene, msrs_det) not present")
def test_smoke_report_measures_every_section(tmp_path):
    pytest.importorskip("ultralytics")
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "realtime_report.py"), "--out", str(out),
                          "--smoke", "--threads", "1"], capture_output=True, text=True,
                         env=cli_env() | {"OMP_NUM_THREADS": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((out / "realtime_report.json").read_text())
    assert r["smoke"] and len(r["load_before"]) == 3 and len(r["load_after"]) == 3
    assert 0 < r["flops"]["lite"]["64x96"] < r["flops"]["full"]["64x96"]
    (live,) = r["live"]
    assert live["returncode"] == 0 and live["fps"] > 0 and live["frames_out"] == 12
    assert {"fusion", "detect", "total"} <= set(live["latency_ms"]) and live["latency_ms"]["fusion"]["p99"] > 0
    assert (out / "live_detfp32_64x96.json").is_file()
    det = r["detector"]["64x96"]
    assert det["passed"] and det["ms"]["fp32"]["median"] > 0 and det["ms"]["int8"]["median"] > 0
    for name in ("RoadScene", "MSRS"):
        q = r["quality"][name]
        assert q["pairs"] == 1 and q["lite_vs_teacher"]["psnr_8bit"] > 20 and len(q["mean"]["lite"]) == 12
        i8 = r["int8"]["sets"][name]
        assert i8["pairs"] == 1 and set(i8["rel_diff"]) == set(q["mean"]["lite"])
    md = (out / "realtime_report.md").read_text()
    for heading in ("FLOPs per frame", "Live app end to end", "INT8 vs FP32", "Lite vs teacher", "Load average"):
        assert heading in md
    assert md.strip() in res.stdout
