"""Bad values, files and faults at the CLI, run as a user runs them (``python -m tdfusion_edge.cli``).

Each case asserts the exit code, the one-line message, that no traceback is printed and that
nothing was written. Covers: malformed numbers (ports, skews, sizes, counts, k=v options),
homography files (OpenCV garbage, 2×2, alias bomb, NaN), calibrate's point inputs and featureless
images, the top-level net for unexpected exceptions, the MJPEG server with clients that hang up,
a second Ctrl-C in live, run folders (runs/demo/exp, exp2) and --half on CPU. (Export's progress
bar and `info`'s pre-processing line are checked in test_export_cli.py and test_cli_foundation.py.)
"""
from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import cli_env

CLI = [sys.executable, "-m", "tdfusion_edge.cli"]


def tdf(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=cli_env(), cwd=cwd,
                          timeout=timeout)


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_one_line_error(res: subprocess.CompletedProcess, match: str, code: int = 2) -> str:
    """Exit ``code``, no traceback, and exactly one stderr line that starts the error and names ``match``."""
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and match in errors[0], res.stderr
    return errors[0]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working folder with tiny inputs: image folders, featureless/noise images, bad files."""
    rng = np.random.default_rng(0)
    for name in ("ir", "vis"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "0.png"), rng.integers(0, 256, (32, 32), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "flat_ir.png"), np.full((120, 160), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "flat_vis.png"), np.full((120, 160, 3), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "noise_ir.png"), rng.integers(0, 256, (120, 160), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "noise_vis.png"), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    (tmp_path / "points.bin").write_bytes(bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    (tmp_path / "cv_garbage.yaml").write_text("%YAML:1.0\n---\nhomography: !!opencv-matrix\n   rows: 3\n"
                                              "   cols: 3\n   dt: d\n   data: [ 1, 0\n garbage ]]]\n")
    (tmp_path / "two_by_two.yaml").write_text("homography: [[1, 0], [0, 1]]\n")
    (tmp_path / "nan.json").write_text('{"homography": [[1, 0, 0], [0, NaN, 0], [0, 0, 1]]}')
    bomb, prev = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n', "a"
    for name in "bcdefghi":  # 9 ** 9 strings once expanded, from 339 bytes
        bomb += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    (tmp_path / "bomb.yaml").write_text(bomb + f"homography: *{prev}\n")
    return tmp_path


# -- numbers rejected by argparse before anything runs ------------------------------------------
@pytest.mark.parametrize("args, match", [
    (["live", "--ir", "ir", "--vis", "vis", "--serve", "70000"], "argument --serve: must be between 1 and 65535"),
    (["live", "--ir", "ir", "--vis", "vis", "--max-skew-ms", "-5"], "argument --max-skew-ms: must be > 0"),
    (["live", "--ir", "ir", "--vis", "vis", "--size", "0x0"], "argument --size"),
    (["demo", "--pairs", "0"], "argument --pairs: must be between 1 and 200"),
    (["demo", "--size", "0", "0"], "argument --size: must be between 16 and 2048"),
    (["export", "--imgsz", "100000", "100000"], "argument --imgsz: must be between 8 and 4096"),
])
def test_bad_numbers_are_one_argparse_line(work, args, match):
    before = snapshot(work)
    res = tdf(*args, cwd=work)
    line = assert_one_line_error(res, match)
    assert line.startswith(f"tdfusion-edge {args[0]}: error: argument")
    assert snapshot(work) == before


# -- homography files and source options (checked before the model loads) -----------------------
@pytest.mark.parametrize("name, match", [
    ("cv_garbage.yaml", "cannot parse homography file cv_garbage.yaml: expected <block end>, but found ']' at line 8"),
    ("two_by_two.yaml", "a homography is 3×3; got shape (2, 2)"),
    ("bomb.yaml", "homography files may not use anchors or aliases"),
    ("nan.json", "NaN or infinite"),
    ("points.bin", "is not a text file"),
])
def test_bad_homography_files(work, name, match):
    before = snapshot(work)
    res = tdf("live", "--ir", "ir", "--vis", "vis", "--homography", name, cwd=work, timeout=60)
    assert_one_line_error(res, match)
    assert snapshot(work) == before


def test_nan_fps_option(work):
    res = tdf("live", "--ir", "ir", "--vis", "vis", "--ir-opts", "fps=nan", cwd=work, timeout=60)
    assert_one_line_error(res, "source option fps='nan' must be a finite number")


# -- calibrate ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, match", [
    (["--pair", "e,e:e,e", "--pair", "1,2:3,4"], "--pair 'e,e:e,e': coordinate must be a number"),
    (["--pair", "1e400,0:1,1"], "must be a finite number"),
    (["--points", "points.bin"], "points file points.bin is not a text file"),
    (["--ir", "flat_ir.png", "--vis", "flat_vis.png", "--from-images"], "the IR image is featureless"),
    (["--ir", "noise_ir.png", "--vis", "noise_vis.png", "--from-images"],
     "is below --min-correlation 0.2 (unrelated or featureless images score there); nothing saved"),
])
def test_calibrate_refuses_and_saves_nothing(work, args, match):
    before = snapshot(work)
    res = tdf("calibrate", *args, "-o", "H.yaml", cwd=work, timeout=60)
    assert_one_line_error(res, match)
    assert snapshot(work) == before


def test_export_det_size_names_the_nearest_valid_one(work):
    res = tdf("export", "--imgsz", "240", "320", "--det", "yolov8n.yaml", cwd=work, timeout=120)
    assert_one_line_error(res, "multiples of 32 (the detector's stride); the nearest valid size that holds it "
                               "is --imgsz 256 320")
    assert not list(work.glob("*.onnx"))


# -- the top-level net ----------------------------------------------------------------------------
_FAILING = ("import sys; from tdfusion_edge import cli; from tdfusion_edge.cli import info\n"
            "def boom(args): raise RuntimeError('disk on fire\\nsecond line')\n"
            "info.run = boom\n"
            "sys.exit(cli.main())")


@pytest.mark.parametrize("verbose", [False, True])
def test_unexpected_exception_is_one_line_exit_1(work, verbose):
    res = subprocess.run([sys.executable, "-c", _FAILING, *(["-v"] if verbose else []), "info"],
                         capture_output=True, text=True, env=cli_env(), cwd=work, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == \
        "error: RuntimeError: disk on fire second line (run with -v for the traceback)"
    assert ("Traceback" in res.stderr) == verbose


# -- live: MJPEG clients that hang up, --half on CPU, pycuda not logged --------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hang_up_clients(port: int, proc: subprocess.Popen, deadline: float) -> int:
    """Connect as impatient browsers do: request, then reset the connection at once or mid-stream."""
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    done = 0
    for path in ("/stream.mjpg", "/snapshot.jpg", "/", "/stats", "/stream.mjpg"):
        for delay in (0.0, 0.05, 0.3):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                return done
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(delay)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
            s.close()
            done += 1
    return done


def test_mjpeg_clients_hanging_up_print_no_traceback(work):
    port = _free_port()
    taken = work / "runs" / "live" / "exp"
    taken.mkdir(parents=True)
    (taken / "keep.txt").write_text("another run's file")
    proc = subprocess.Popen([*CLI, "live", "--ir", "synthetic", "--vis", "synthetic", "--ir-opts", "scene=48x64",
                             "--vis-opts", "scene=48x64", "--backend", "torch", "--device", "cpu", "--half",
                             "--serve", str(port), "--duration", "4", "--out"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=work)
    try:
        clients = _hang_up_clients(port, proc, time.monotonic() + 90)
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert clients >= 10, (clients, err)
    assert "Traceback" not in err and "Exception occurred" not in err, err
    assert err.count("--half ignored") == 1, err          # said once, by the CLI
    assert "pycuda" not in err, err                        # no longer logged at INFO by every run
    assert "frames out" in out
    # `--out` alone: runs/live/exp is another run's, so this one goes to exp2 and says where.
    assert f"outputs in {(work / 'runs' / 'live' / 'exp2').resolve()}" in out
    assert (work / "runs" / "live" / "exp2" / "live.mp4").is_file()
    assert snapshot(taken) == {"keep.txt"}


# -- live: a second Ctrl-C while outputs close ----------------------------------------------------
def test_second_ctrl_c_still_writes_stats_and_summary(work):
    out_dir = work / "run"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")  # --exist-ok: the run writes into this folder anyway
    err_path = work / "live.err"
    # The IR camera "disconnects" at frame 3 and rebuilds a 2048² world on reconnection (seconds, in
    # its reader thread): closing then waits for that reader, which is when an impatient user presses
    # Ctrl-C again.
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen([*CLI, "live", "--ir", "synthetic", "--vis", "synthetic",
                                 "--ir-opts", "scene=2048x2048,size=48x64,fail_at=3,down_s=0",
                                 "--vis-opts", "scene=48x64", "--backend", "torch", "--device", "cpu",
                                 "--out", str(out_dir), "--exist-ok", "--duration", "60"],
                                stdout=subprocess.PIPE, stderr=err_file, text=True, env=cli_env(), cwd=work)
        try:
            deadline = time.monotonic() + 90
            while "source lost" not in err_path.read_text() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
    err = err_path.read_text()
    assert proc.returncode == 130, err                   # wherever the second press landed
    assert "Traceback" not in err, err
    assert "frames out" in out and f"outputs in {out_dir.resolve()}" in out
    stats = json.loads((out_dir / "stats.json").read_text())
    assert stats["stopped_by"] == "interrupted" and (out_dir / "notes.txt").read_text() == "mine"


def test_repeated_interrupts_are_held_after_the_first():
    """The mechanism itself, in this process: the first SIGINT interrupts, later ones only log."""
    import os

    from tdfusion_edge.apps.pipeline import hold_repeated_interrupts

    before = signal.getsignal(signal.SIGINT)
    restore = hold_repeated_interrupts()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGINT)       # while "closing": must not raise
        time.sleep(0.05)
        assert hold_repeated_interrupts()() is None   # nested holds are no-ops
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is before


# -- run folders ------------------------------------------------------------------------------------
def test_demo_runs_go_to_numbered_run_folders(work):
    args = ("demo", "--pairs", "1", "--size", "32", "32", "--live-frames", "0", "--backend", "torch", "--device", "cpu")
    first, second = tdf(*args, cwd=work), tdf(*args, cwd=work)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    exp, exp2 = work / "runs" / "demo" / "exp", work / "runs" / "demo" / "exp2"
    assert f"everything is in {exp.resolve()}" in first.stdout
    assert f"everything is in {exp2.resolve()}" in second.stdout
    assert (exp / "montage.png").is_file() and (exp2 / "montage.png").is_file()
