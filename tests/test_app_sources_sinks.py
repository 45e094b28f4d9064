"""Sources (parsing, image folders incl. 16-bit, video files, the synthetic pair) and sinks (video
file, frames, JSON lines, the MJPEG server on loopback)."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

from tdfusion_edge.apps.sinks import FrameFolderSink, JsonlSink, MjpegSink, VideoFileSink
from tdfusion_edge.apps.sources import SourceError, open_source, parse_source
from tdfusion_edge.apps.synthetic_stream import SyntheticWorld
from tdfusion_edge.apps.testmedia import synthetic_video_pair
from tdfusion_edge.imaging import write_image


def test_parse_source_kinds(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert parse_source("0").kind == "device" and parse_source("0").target == 0
    assert parse_source("/dev/video2").kind == "device"
    pipeline = "nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! video/x-raw,format=BGRx ! appsink"
    assert parse_source(pipeline).kind == "gstreamer"
    assert parse_source("rtsp://192.168.1.5:554/stream?channel=1").kind == "url"
    assert parse_source(str(tmp_path)).kind == "folder"
    assert parse_source(str(tmp_path / "clip.mp4"), "loop=1,fps=5").options == {"loop": "1", "fps": "5"}
    spec = parse_source("synthetic:fps=9;seed=3", "size=120x160")
    assert spec.kind == "synthetic" and spec.options == {"fps": "9", "seed": "3", "size": "120x160"}
    with pytest.raises(SourceError, match="not found"):
        parse_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="key=value"):
        parse_source("0", "fps")


def test_image_folder_natural_order_and_16bit(tmp_path):
    for i in (10, 2, 1):
        write_image(tmp_path / f"f{i}.png", np.full((6, 8), i, np.uint8))
    cv2.imwrite(str(tmp_path / "f3.png"), np.full((6, 8), 40000, np.uint16))
    src = open_source(str(tmp_path), "ir", "fps=4")
    src.open()
    frames = [src.read() for _ in range(5)]
    assert [int(f[0].max()) for f in frames[:4]] == [1, 2, 40000, 10] and frames[4] is None
    assert frames[2][0].dtype == np.uint16 and [f[1] for f in frames[:4]] == [0, 0.25, 0.5, 0.75]


def test_video_file_source_and_loop(tmp_path):
    ir_path, _ = synthetic_video_pair(tmp_path, frames=6, size=(48, 64), fps=12)
    src = open_source(str(ir_path), "ir", "loop=1")
    src.open()
    items = [src.read() for _ in range(9)]
    src.close()
    assert all(it is not None for it in items) and items[0][0].shape == (48, 64, 3)
    assert src.nominal_fps == pytest.approx(12) and items[8][1] == pytest.approx(8 / 12)
    once = open_source(str(ir_path), "ir")
    once.open()
    assert sum(1 for _ in iter(once.read, None)) == 6


def test_synthetic_pair_is_registered_and_moves():
    world = SyntheticWorld(seed=4, height=96, width=128, condition="night", movers=3)
    ir0, ir1 = world.render(0.0, "ir"), world.render(1.0, "ir")
    vis0 = world.render(0.0, "vis")
    assert ir0.shape == (96, 128) and vis0.shape == (96, 128, 3)
    assert np.abs(ir0.astype(int) - ir1).mean() > 1.0  # objects moved
    boxes = world.boxes(0.5)
    assert len(boxes) >= len(world.base_boxes) and np.all(boxes[:, 3] <= 128)
    src = open_source("synthetic", "ir", "fps=9,bits=16,size=48x64,scene=96x128,seed=4,condition=night")
    src.open()
    img, t = src.read()
    assert img.dtype == np.uint16 and img.shape == (48, 64) and t == 0.0 and src.read()[1] == pytest.approx(1 / 9)


def test_synthetic_source_simulated_disconnect():
    src = open_source("synthetic", "vis", "fail_at=2,down_s=0.2,scene=32x40")
    src.open()
    src.read(), src.read()
    with pytest.raises(SourceError, match="disconnected"):
        src.read()
    with pytest.raises(SourceError, match="unplugged"):
        src.open()


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_video_sink_is_playable_after_close(tmp_path, suffix):
    sink = VideoFileSink(tmp_path / f"out{suffix}", fps=10)
    for i in range(7):
        sink.write(np.full((48, 64, 3), i * 30, np.uint8), {})
    sink.write(np.zeros((20, 20, 3), np.uint8), {})  # a different size is resized, not dropped
    sink.close()
    cap = cv2.VideoCapture(str(tmp_path / f"out{suffix}"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 8 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 64


def test_frame_folder_and_jsonl_sinks(tmp_path):
    frames, lines = FrameFolderSink(tmp_path / "frames"), JsonlSink(tmp_path / "det.jsonl")
    for i in range(3):
        rec = {"frame": i, "detections": [{"cls": 0, "conf": 0.5, "box": [1, 2, 3, 4]}]}
        frames.write(np.zeros((8, 8, 3), np.uint8), rec)
        lines.write(None, rec)
    lines.close()
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"frame_00000{i}.jpg" for i in range(3)]
    assert [json.loads(line)["frame"] for line in (tmp_path / "det.jsonl").read_text().splitlines()] == [0, 1, 2]


def _read_multipart_frames(url: str, count: int, timeout: float = 5.0) -> list[bytes]:
    jpegs = []
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        while len(jpegs) < count:
            line = resp.readline()
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
                resp.readline()
                jpegs.append(resp.read(length))
    return jpegs


def test_mjpeg_server_on_loopback():
    sink = MjpegSink(port=0)  # an ephemeral port on 127.0.0.1
    server = sink.server
    try:
        assert server.host == "127.0.0.1"
        got = {}
        reader = threading.Thread(target=lambda: got.setdefault("jpegs", _read_multipart_frames(
            f"http://127.0.0.1:{server.port}/stream.mjpg", 2)), daemon=True)
        reader.start()
        deadline = time.monotonic() + 5
        i = 0
        while reader.is_alive() and time.monotonic() < deadline:
            sink.write(np.full((32, 48, 3), 40 * (i % 6), np.uint8), {"frame": i})
            i += 1
            time.sleep(0.05)
        reader.join(1)
        assert len(got.get("jpegs", [])) == 2
        img = cv2.imdecode(np.frombuffer(got["jpegs"][0], np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (32, 48, 3)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/snapshot.jpg", timeout=5) as resp:
            assert resp.headers["Content-Type"] == "image/jpeg" and len(resp.read()) > 100
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/stats", timeout=5) as resp:
            assert "frame" in json.loads(resp.read())
    finally:
        sink.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
