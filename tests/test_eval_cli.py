"""The ``eval`` subcommand: direct calls through its own parser, and ``python -m tdfusion_edge.cli`` runs."""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tdfusion_edge.cli import eval_cmd
from tdfusion_edge.errors import TDFusionError

REPO = Path(__file__).resolve().parents[1]


def _scene(seed: int, shape=(48, 56)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, shape), (0, 0), 3)
    img[10:30, 12:40] += 50
    return np.clip(np.round(img + rng.normal(0, 4, shape)), 0, 255).astype(np.uint8)


@pytest.fixture()
def folders(tmp_path):
    """Four IR/VIS pairs (.jpg); fused .png for two good ones, a corrupt one, a size mismatch and an orphan."""
    ir, vis, fused = (tmp_path / d for d in ("ir", "vis", "fused"))
    for d in (ir, vis, fused):
        d.mkdir()
    for i, name in enumerate(["good1", "good2", "corrupt", "small", "unfused"]):
        a, b = _scene(2 * i), _scene(2 * i + 1)
        cv2.imwrite(str(ir / f"{name}.jpg"), a)
        cv2.imwrite(str(vis / f"{name}.jpg"), b)
        if name.startswith("good"):
            cv2.imwrite(str(fused / f"{name}.png"), ((a.astype(int) + b) // 2).astype(np.uint8))
    (fused / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cv2.imwrite(str(fused / "small.png"), _scene(99, (24, 28)))
    cv2.imwrite(str(fused / "orphan.png"), _scene(98))
    (fused / "notes.txt").write_text("not an image, ignored")
    return tmp_path


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    eval_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


def _dirs(root: Path) -> list[str]:
    return ["--ir", str(root / "ir"), "--vis", str(root / "vis"), "--fused", str(root / "fused")]


def test_parser_has_help_epilog_and_default_convention():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    eval_cmd.add_parser(sub)
    eval_parser = sub.choices["eval"]
    assert "example" in (eval_parser.epilog or "")
    args = parser.parse_args(["eval", "--ir", "a", "--vis", "b", "--fused", "c"])
    assert args.convention == "both" and args.func is eval_cmd.run


def test_eval_table_skips_and_files(folders, capsys):
    csv_path, json_path = folders / "out" / "m.csv", folders / "out" / "m.json"
    rc = _run([*_dirs(folders), "--metrics", "EN,sf,VIF,SSIM", "--csv", str(csv_path), "--json", str(json_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "convention: tdfusion" in out and "convention: cddfuse" in out
    assert out.count("good1") == 2 and out.count("\nmean ") == 2
    assert "evaluated 2 of 5 fused images; skipped 3" in out
    assert "skipped corrupt: unreadable fused image corrupt.png" in out
    assert "skipped orphan: no ir or vis source" in out
    assert "skipped small: size mismatch: fused 24x28, ir 48x56, vis 48x56" in out
    assert "1 IR/VIS pairs have no fused image" in out

    rows = list(csv.DictReader(csv_path.open()))
    assert [r["image"] for r in rows] == ["good1", "good2", "mean"] * 2
    assert list(rows[0]) == ["image", "convention", "EN", "SF", "VIF", "SSIM"]
    td = {r["image"]: r for r in rows if r["convention"] == "tdfusion"}
    cdd = {r["image"]: r for r in rows if r["convention"] == "cddfuse"}
    assert float(cdd["good1"]["VIF"]) == pytest.approx(2 * float(td["good1"]["VIF"]))
    mean_en = (float(td["good1"]["EN"]) + float(td["good2"]["EN"])) / 2
    assert float(td["mean"]["EN"]) == pytest.approx(mean_en)

    data = json.loads(json_path.read_text())
    assert data["evaluated"] == 2 and len(data["skipped"]) == 3
    assert set(data["conventions"]) == {"tdfusion", "cddfuse"}
    assert data["conventions"]["tdfusion"]["mean"]["EN"] == pytest.approx(mean_en)


def test_single_convention_prints_one_table(folders, capsys):
    assert _run([*_dirs(folders), "--convention", "cddfuse", "--metrics", "Qabf"]) == 0
    out = capsys.readouterr().out
    assert "convention: cddfuse" in out and "convention: tdfusion" not in out


@pytest.mark.parametrize("argv_fn, message", [
    (lambda r: ["--ir", str(r / "nope"), "--vis", str(r / "vis"), "--fused", str(r / "fused")],
     "--ir folder not found"),
    (lambda r: [*_dirs(r), "--metrics", "EN,XYZ"], "unknown metric"),
])
def test_user_errors_are_one_line(folders, argv_fn, message):
    with pytest.raises(TDFusionError, match=message):
        _run(argv_fn(folders))


def test_nothing_evaluated_is_an_error(folders, capsys):
    for name in ("good1", "good2"):
        (folders / "fused" / f"{name}.png").unlink()
    with pytest.raises(TDFusionError, match="nothing could be evaluated"):
        _run(_dirs(folders))
    assert "skipped corrupt" in capsys.readouterr().out


# ---------------------------------------------------------------- through the real command line

def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdfusion_edge.cli", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _skip_if_framework_lacks_eval(proc: subprocess.CompletedProcess) -> None:
    # The CLI framework imports every subcommand module; until all of them exist it cannot start.
    if proc.returncode != 0 and ("ModuleNotFoundError" in proc.stderr or "invalid choice" in proc.stderr):
        pytest.skip("the CLI framework does not expose the eval command yet")


def test_cli_subprocess_success_and_missing_folder(folders):
    ok = _cli("eval", *_dirs(folders), "--metrics", "EN,SSIM")
    _skip_if_framework_lacks_eval(ok)
    assert ok.returncode == 0, ok.stderr
    assert "convention: tdfusion" in ok.stdout and "skipped corrupt" in ok.stdout
    assert "Traceback" not in ok.stderr

    bad = _cli("eval", "--ir", str(folders / "missing"), "--vis", str(folders / "vis"),
               "--fused", str(folders / "fused"))
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --ir folder not found")
