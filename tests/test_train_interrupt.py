"""SIGTERM / Ctrl-C during ``tdfusion-edge train``: a final checkpoint, the resume command, exit 143 / 130;
signals during a checkpoint write wait for it; stale ``*.tmp`` files of killed writes go at the next start."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tdfusion_edge.train.interrupt import QUIT_AFTER, StopRequest
from tdfusion_edge.train.state import load_state, remove_stale_temporaries

TINY = "{dim: 4, num_blocks: 1, heads: 2}"
# meta_steps is large: the run is still in its first phase when the signal comes
TRAIN = ["--no-progress", "--set", "epochs=2", "--set", "meta_steps=50", "--set", "fusion_steps=1",
         "--set", "num_workers=0", "--set", "crop_size=24", "--set", "synthetic={train: 4, val: 2, image_size: [32, 48]}",
         "--set", f"fusion_net={TINY}", "--set", f"loss_generator={TINY}", "--set", "metric_samples=1",
         "--set", "eval_samples=2", "--set", "weight_map_samples=1", "--set", "checkpoint_every=1000",
         "--set", "log_every=1"]
CLI = [sys.executable, "-m", "tdfusion_edge.cli"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train_until_first_step(out: Path) -> tuple[subprocess.Popen, list[str]]:
    """Start a tiny training and return once its first step is logged (with the lines read so far)."""
    proc = subprocess.Popen([*CLI, "train", *TRAIN, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(r"meta step 1/50 \(global step 1\)", line):
            return proc, lines
    proc.wait()
    pytest.fail("training ended before its first step was logged:\n" + "".join(lines[-30:]))


def _finish(proc: subprocess.Popen, lines: list[str]) -> str:
    # read on through the same text stream: communicate() would read the pipe underneath it and lose
    # what the line iteration had already buffered (the last lines, such as the resume command)
    rest = proc.stdout.read()
    proc.wait(timeout=300)
    return "".join(lines) + rest


@pytest.mark.timeout(600)
def test_sigterm_writes_final_checkpoint_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    proc, lines = _train_until_first_step(out)
    proc.send_signal(signal.SIGTERM)
    text = _finish(proc, lines)
    assert proc.returncode == 143, text[-3000:]
    assert "Traceback" not in text
    last = out / "last.pt"
    state = load_state(last)  # loadable (weights_only) and complete
    assert state["position"]["epoch"] == 0 and state["position"]["phase"] == "meta"
    assert 1 <= state["position"]["global_step"] < 50
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    hint = re.search(r"Resume with:\n\s+(tdfusion-edge train --resume .+)\n", text)
    assert hint, text[-2000:]
    command = shlex.split(hint.group(1))
    assert Path(command[-1]) == last.resolve()

    # a write killed earlier left a temporary behind: the resumed run removes it and says so
    stale = out / "last.pt.k1lled.tmp"
    stale.write_bytes(b"half a checkpoint")
    resumed = subprocess.run([*CLI, *command[1:], "--set", "meta_steps=3", "--no-progress"], capture_output=True,
                             text=True, timeout=600, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not stale.exists()
    assert "removed 1 stale temporary file(s) left by an interrupted write: last.pt.k1lled.tmp" in resumed.stderr
    done = load_state(last)
    assert done["position"]["epoch"] == 2
    stopped_at = state["position"]["global_step"]  # the rest of epoch 1, then epoch 2: 3 meta + 1 fusion steps
    assert done["position"]["global_step"] == stopped_at + max(0, 3 - stopped_at) + 1 + 4
    assert "resumed training" in (out / "train.log").read_text()


@pytest.mark.timeout(600)
def test_repeated_ctrl_c_still_give_one_intact_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc, lines = _train_until_first_step(out)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # during the step, the write or after it: never quits without a checkpoint
    for line in proc.stdout:
        lines.append(line)
        if "stopped by SIGINT" in line:  # the final checkpoint is written and the process is leaving
            proc.send_signal(signal.SIGINT)  # a late third one must neither quit early nor print a traceback
            break
    text = _finish(proc, lines)
    assert proc.returncode == 130, text[-3000:]
    assert "quitting without" not in text
    assert "Traceback" not in text and "Resume with:" in text
    assert load_state(out / "last.pt")["position"]["global_step"] >= 1
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_signals_during_a_checkpoint_write_wait_for_it():
    stop = StopRequest()
    assert stop.install()
    try:
        with stop.writing():
            for _ in range(QUIT_AFTER + 1):  # even the quitting signal must not cut a write short
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        assert stop.requested and stop.signum == signal.SIGINT and stop.count == QUIT_AFTER + 1
        with pytest.raises(KeyboardInterrupt):  # outside a write, a further signal quits at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        stop.settle()  # once the final checkpoint is written, late signals are ignored (no traceback at exit)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_stale_temporaries_removed_and_counted(tmp_path):
    (tmp_path / "weight_maps").mkdir()
    stale = [tmp_path / "last.pt.abc123.tmp", tmp_path / ".config.yaml.x9.tmp",
             tmp_path / "weight_maps" / "epoch_001.png.q.tmp"]
    keep = [tmp_path / "last.pt", tmp_path / "notes.tmp", tmp_path / "data" / "a.b.tmp"]
    for p in stale + keep:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
