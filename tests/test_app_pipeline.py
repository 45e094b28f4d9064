"""The whole live app, headless: file sources to a playable video + stats, 16-bit folders with a
homography, a camera failing mid-run, Ctrl-C, and the command line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tdfusion_edge.apps import LiveConfig, run_live
from tdfusion_edge.apps.registration import Homography, save_homography
from tdfusion_edge.apps.testmedia import synthetic_video_pair
from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.imaging import write_image


class MaxBackend:
    """A trivial fusion rule for tests about plumbing, not about the network."""

    name = "max"

    def fuse(self, ir_y, vis_y):
        return np.maximum(ir_y, vis_y)

    def close(self):
        pass


@pytest.fixture(scope="module")
def fusion(tmp_path_factory):
    """Backend settings for the real network: a random-init FusionNet checkpoint through
    ``export.backends.create_backend`` ('torch')."""
    import torch

    from tdfusion_edge.checkpoints import save_checkpoint
    from tdfusion_edge.models import FusionNet, FusionNetConfig
    pytest.importorskip("tdfusion_edge.export.backends")
    torch.manual_seed(0)
    path = save_checkpoint(FusionNet(FusionNetConfig()), tmp_path_factory.mktemp("w") / "fusion.pt")
    return {"backend": "torch", "weights": str(path), "device": "cpu"}


def _count_frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_headless_run_on_video_files(tmp_path, fusion):
    ir, vis = synthetic_video_pair(tmp_path / "in", frames=10, size=(48, 64), fps=10, seed=2)
    out = tmp_path / "out"
    stats = run_live(LiveConfig(ir=str(ir), vis=str(vis), realtime=False, det="yolov8n.yaml", det_imgsz=64,
                                det_conf=0.01, output_dir=str(out), view="side-by-side", threads=1, **fusion))
    assert stats.stopped_by == "end of input" and stats.frames_out == 10 and stats.paired_out == 10
    assert _count_frames(out / "live.mp4") == 10
    saved = json.loads((out / "stats.json").read_text())
    assert saved["frames_in"] == {"ir": 10, "vis": 10} and saved["unmatched"] == {"ir": 0, "vis": 0}
    for stage in ("preprocess", "fusion", "compose", "detect", "overlay", "sink", "total"):
        assert saved["latency_ms"][stage]["count"] == 10 and saved["latency_ms"][stage]["p50"] >= 0
    records = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(10)) and all(r["mode"] == "paired" for r in records)
    assert all(r["skew_ms"] == 0 and isinstance(r["detections"], list) for r in records)
    cap = cv2.VideoCapture(str(out / "live.mp4"))
    assert cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 3 * 64  # IR | visible | fused


def test_16bit_folders_with_homography(tmp_path, fusion):
    rng = np.random.default_rng(0)
    (tmp_path / "ir").mkdir()
    for i in range(4):  # a 32×24 radiometric core beside a 64×48 colour camera
        cv2.imwrite(str(tmp_path / "ir" / f"{i}.png"), rng.normal(7500, 300, (24, 32)).astype(np.uint16))
        write_image(tmp_path / "vis" / f"{i}.png", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    h = Homography(np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1.0]]), (32, 24), (64, 48))
    save_homography(h, tmp_path / "H.yaml")
    stats = run_live(LiveConfig(ir=str(tmp_path / "ir"), vis=str(tmp_path / "vis"), homography=str(tmp_path / "H.yaml"),
                                realtime=False, size=(40, 40), frames_dir=str(tmp_path / "frames"), hud=False,
                                threads=1, **fusion))
    assert stats.paired_out == 4
    frame = cv2.imread(str(tmp_path / "frames" / "frame_000000.jpg"))
    assert frame.shape == (40, 40, 3)
    assert frame[:4].max() < 40 and frame[-4:].max() < 40  # letterbox bars of the 4:3 frame in a square grid


def test_camera_failing_mid_run_does_not_stop_the_app(tmp_path):
    stats = run_live(LiveConfig(ir="synthetic", vis="synthetic", ir_options="fps=30,scene=32x40,fail_at=8,down_s=0.6",
                                vis_options="fps=30,scene=32x40", backend=MaxBackend(), max_frames=45, duration=20,
                                stall_timeout=0.3, jsonl=str(tmp_path / "d.jsonl"), stats_path=str(tmp_path / "s.json")))
    assert stats.frames_out == 45 and stats.stopped_by == "max frames"
    assert stats.vis_only_out > 0 and stats.paired_out > 0 and stats.reconnects["ir"] >= 1
    modes = [json.loads(line)["mode"] for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    first = modes.index("vis_only")
    assert "paired" in modes[first:]  # fusion resumes after the camera comes back
    assert json.loads((tmp_path / "s.json").read_text())["latency_ms"]["e2e"]["count"] == 45


def test_missing_detector_weights_is_one_line_error():
    with pytest.raises(TDFusionError, match="yaml"):
        run_live(LiveConfig(backend=MaxBackend(), det=str(Path("no_such_dir") / "missing_detector.pt")))


_RUNNER = textwrap.dedent("""
    import sys
    import numpy as np
    from tdfusion_edge.apps import LiveConfig, run_live

    class MaxBackend:
        name = "max"
        def fuse(self, ir_y, vis_y):
            return np.maximum(ir_y, vis_y)
        def close(self):
            pass

    stats = run_live(LiveConfig(ir=sys.argv[1], vis=sys.argv[2], backend=MaxBackend(), output_dir=sys.argv[3]))
    print("stopped by", stats.stopped_by)
    sys.exit(130 if stats.stopped_by == "interrupted" else 0)
""")


def test_ctrl_c_leaves_a_playable_video(tmp_path):
    ir, vis = synthetic_video_pair(tmp_path / "in", frames=300, size=(32, 40), fps=30, seed=1)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(ir), str(vis), str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _count_lines(out / "detections.jsonl") < 5 and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "stopped by interrupted" in output, output
    n, written = _count_frames(out / "live.mp4"), _count_lines(out / "detections.jsonl")
    assert n >= 5 and n == written, output
    assert json.loads((out / "stats.json").read_text())["stopped_by"] == "interrupted"


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_cli_arguments_map_to_config():
    import argparse

    from tdfusion_edge.cli import live
    parser = argparse.ArgumentParser()
    live.add_parser(parser.add_subparsers())
    args = parser.parse_args(["live", "--ir", "0", "--vis", "rtsp://cam/stream", "--homography", "H.yaml",
                              "--weights", "w.pt", "--det", "yolov8n.pt", "--size", "240x320", "--no-realtime",
                              "--serve", "8080", "--save", "out.mp4", "--max-frames", "5", "--ir-opts", "fps=9"])
    cfg = live.config_from_args(args)
    assert (cfg.ir, cfg.vis, cfg.size, cfg.realtime, cfg.serve, cfg.max_frames) == \
        ("0", "rtsp://cam/stream", (240, 320), False, 8080, 5)
    assert cfg.ir_options == "fps=9" and cfg.det == "yolov8n.pt" and cfg.serve_host == "127.0.0.1"
    with pytest.raises(TDFusionError, match="HEIGHTxWIDTH"):
        live.parse_hw("240*320")
