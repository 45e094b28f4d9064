"""Where output frames go: a window, a video file, a frame folder, JSON lines, an MJPEG stream.

Every sink has ``write(frame, record)`` (a BGR uint8 frame and the per-frame record: time stamps,
mode, detections, latencies) and ``close()``, which the pipeline calls however the run ends, so a
video file is always finalised (playable) after Ctrl-C or the end of the input.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.validation.output_path import OutputPathError, ensure_output_dir, os_reason, write_image_atomic

log = logging.getLogger(__name__)

# Codecs that opencv-python(-headless) wheels can write without extra libraries.
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class Sink:
    """Base class: ``write`` each frame, ``close`` once; ``stop_requested`` lets a sink end the run."""

    stop_requested = False

    def write(self, frame: np.ndarray, record: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class VideoFileSink(Sink):
    """A video file, opened at the first frame (its size fixes the video's size)."""

    def __init__(self, path: str | os.PathLike, fps: float = 15.0, fourcc: str | None = None):
        self.path = Path(path)
        if self.path.suffix.lower() not in _FOURCC and not fourcc:
            raise TDFusionError(f"unsupported video suffix {self.path.suffix!r}; use one of {', '.join(_FOURCC)}")
        self.fourcc = fourcc or _FOURCC[self.path.suffix.lower()]
        self.fps = float(fps) if fps and fps > 0 else 15.0
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, frame: np.ndarray, record: dict) -> None:
        if self.writer is None:
            ensure_output_dir(self.path.parent, "video folder")
            self.size = (frame.shape[1], frame.shape[0])
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self.size)
            if not self.writer.isOpened():
                self.writer = None
                raise TDFusionError(f"cannot write video {self.path} with codec {self.fourcc}")
            log.info("writing %s (%dx%d, %s, %.1f fps)", self.path, *self.size, self.fourcc, self.fps)
        if (frame.shape[1], frame.shape[0]) != self.size:
            # The writer silently drops frames of another size; keep every frame instead.
            frame = cv2.resize(frame, self.size)
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()  # writes the index (moov atom): without it the file does not play
            self.writer = None


class FrameFolderSink(Sink):
    """One image per frame: ``frame_000000.jpg``, … (suffix picks the format)."""

    def __init__(self, folder: str | os.PathLike, suffix: str = ".jpg"):
        self.folder = ensure_output_dir(folder, "frames folder")
        self.suffix = suffix if suffix.startswith(".") else "." + suffix
        self.frames = 0

    def write(self, frame: np.ndarray, record: dict) -> None:
        path = self.folder / f"frame_{record.get('frame', self.frames):06d}{self.suffix}"
        write_image_atomic(path, frame)  # a frame file is complete or absent, even if the run is killed
        self.frames += 1


class JsonlSink(Sink):
    """One JSON object per output frame (detections, time stamps, mode, latencies)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        ensure_output_dir(self.path.parent, "JSON-lines folder")
        try:
            self.fh = open(self.path, "w", buffering=1)  # line-buffered: complete lines even after a crash
        except OSError as exc:
            raise OutputPathError(f"cannot write {self.path}: {os_reason(exc)}") from None

    def write(self, frame: np.ndarray, record: dict) -> None:
        try:
            self.fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        except OSError as exc:  # disk full mid-run: one line naming the file
            raise OutputPathError(f"cannot write {self.path}: {os_reason(exc)}") from None

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()


def has_display() -> bool:
    """A GUI is possible: a display server is set (Linux) and this OpenCV has highgui."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    info = cv2.getBuildInformation()
    gui = [line for line in info.splitlines() if line.strip().startswith("GUI:")]
    return not gui or "NONE" not in gui[0].upper()


class WindowSink(Sink):
    """An OpenCV window; 'q' or Esc ends the run."""

    def __init__(self, title: str = "tdfusion-edge"):
        self.title = title
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)

    def write(self, frame: np.ndarray, record: dict) -> None:
        cv2.imshow(self.title, frame)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.stop_requested = True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


class MjpegSink(Sink):
    """Publishes JPEG-encoded frames to an ``MjpegServer`` (http://host:port/)."""

    def __init__(self, port: int, host: str = "127.0.0.1", quality: int = 80):
        from .mjpeg_server import MjpegServer
        try:
            self.server = MjpegServer(port, host)
        except OSError as exc:
            raise TDFusionError(f"cannot serve MJPEG on {host}:{port}: {exc.strerror or exc}") from None
        self.params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        log.info("MJPEG stream at %s", self.server.url)

    def write(self, frame: np.ndarray, record: dict) -> None:
        ok, buf = cv2.imencode(".jpg", frame, self.params)
        if ok:
            self.server.publish(buf.tobytes(), record)

    def close(self) -> None:
        self.server.close()
