"""Frame sources: what ``--ir`` / ``--vis`` name, opened behind one small interface.

A source only opens, reads and closes; threads, queues, time stamps, pacing and reconnection are the
reader's job (``apps.reader``), so every kind of source gets the same behaviour.

Source strings (options go in a separate ``k=v,k=v`` string so URLs keep their own ``?query``):

| string | kind |
|---|---|
| ``0``, ``/dev/video0`` | USB / V4L2 camera (options: width, height, fps, fourcc, raw=1 for Y16 thermal) |
| anything containing ``!`` (ending in ``appsink``) | GStreamer pipeline (Jetson CSI ``nvarguscamerasrc``, ``v4l2src``) |
| ``rtsp://``, ``rtsps://``, ``http://``, ``https://``, ``rtmp://``, ``udp://`` | network stream |
| a folder | image sequence, natural order (options: fps, loop) |
| a file | video file (options: fps to override the replay rate, loop) |
| ``synthetic`` | procedural paired street scene (see ``apps.synthetic_stream``) |
"""
from __future__ import annotations

import abc
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tdfusion_edge.errors import ImageReadError, TDFusionError
from tdfusion_edge.imaging import IMAGE_EXTENSIONS, read_image


URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
# Network reads that hang would freeze a reader thread; FFmpeg gives up after this and we reconnect.
NETWORK_TIMEOUT_MS = 5000


class SourceError(TDFusionError):
    """A source that cannot be opened or that stopped delivering frames."""


class FrameSkipped(SourceError):
    """One frame that cannot be used (corrupt file in an image folder); the next one may be fine."""


@dataclass
class SourceSpec:
    """A parsed source string: its kind, what to open, and its options."""

    kind: str                 # device | gstreamer | url | video | folder | synthetic
    target: str | int
    options: dict[str, str] = field(default_factory=dict)

    def option(self, name: str, default: float | None = None) -> float | None:
        """A numeric option, or ``default``; a non-number, NaN or infinity is a one-line error."""
        if name not in self.options:
            return default
        try:
            value = float(self.options[name])
        except ValueError:
            raise SourceError(f"source option {name}={self.options[name]!r} is not a number") from None
        if not math.isfinite(value):
            raise SourceError(f"source option {name}={self.options[name]!r} must be a finite number")
        return value

    def flag(self, name: str) -> bool:
        """A boolean option (1/true/yes/on)."""
        return str(self.options.get(name, "0")).lower() in ("1", "true", "yes", "on")


def parse_options(text: str | None) -> dict[str, str]:
    """``"fps=30,width=640"`` → ``{"fps": "30", "width": "640"}``."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SourceError(f"source option {item!r} should look like key=value")
        out[key.strip().lower()] = value.strip()
    return out


def parse_source(text: str, options: str | dict | None = None) -> SourceSpec:
    """Classify a source string (see the module docstring) and attach its options."""
    opts = parse_options(options) if isinstance(options, str) or options is None else dict(options)
    text = str(text).strip()
    if not text:
        raise SourceError("empty source: give a camera index, /dev/videoN, a pipeline, a URL, a folder or a file")
    if text.lower() == "synthetic" or text.lower().startswith("synthetic:"):
        inline = text.partition(":")[2]
        return SourceSpec("synthetic", "synthetic", {**parse_options(inline.replace(";", ",")), **opts})
    if text.isdigit():
        return SourceSpec("device", int(text), opts)
    if re.fullmatch(r"/dev/video\d+", text) or text.startswith("/dev/v4l/"):
        return SourceSpec("device", text, opts)
    if "!" in text:
        return SourceSpec("gstreamer", text, opts)
    if text.lower().startswith(URL_SCHEMES):
        return SourceSpec("url", text, opts)
    path = Path(text).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path), opts)
    if path.is_file():
        return SourceSpec("video", str(path), opts)
    raise SourceError(f"source not found: {text} (not a camera index, /dev/videoN, GStreamer pipeline, URL, "
                      "folder or file)")


class FrameSource(abc.ABC):
    """Something that yields images. ``reconnects``: a camera-like source, reopened after a failure;
    otherwise the end of its data is final. ``paced``: recorded media that the reader replays at
    ``nominal_fps`` in real-time mode (a camera paces itself)."""

    reconnects: bool = False
    paced: bool = False

    def __init__(self, spec: SourceSpec, role: str):
        self.spec = spec
        self.role = role
        self.nominal_fps: float | None = spec.option("fps")
        if self.nominal_fps is not None and not 0 < self.nominal_fps <= 1000:
            raise SourceError(f"{role} source option fps={spec.options['fps']}: must be > 0 and ≤ 1000")

    @property
    def description(self) -> str:
        return f"{self.spec.kind} {self.spec.target}"

    @abc.abstractmethod
    def open(self) -> None:
        """Open (or reopen) the source; raises SourceError when it cannot."""

    @abc.abstractmethod
    def read(self) -> tuple[np.ndarray, float | None] | None:
        """Next image and its media time in seconds (None for live sources); None at the end."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device or file; safe to call twice."""


class CaptureSource(FrameSource):
    """Cameras, GStreamer pipelines, network streams and video files through cv2.VideoCapture."""

    def __init__(self, spec: SourceSpec, role: str):
        super().__init__(spec, role)
        self.reconnects = spec.kind in ("device", "gstreamer", "url")
        self.paced = spec.kind == "video"
        self.loop = spec.flag("loop")
        self.cap: cv2.VideoCapture | None = None
        self.index = 0  # frames read since opening, across loops, so media time keeps increasing

    def _api(self) -> int:
        if self.spec.kind == "gstreamer":
            if not _has_backend("GSTREAMER"):
                raise SourceError("this OpenCV build has no GStreamer support (pip wheels lack it); on Jetson use "
                                  "JetPack's system OpenCV (python3-opencv) or pass /dev/videoN instead")
            return cv2.CAP_GSTREAMER
        if self.spec.kind == "device":
            return cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        api = self.spec.options.get("api", "").lower()
        return {"ffmpeg": cv2.CAP_FFMPEG, "gstreamer": cv2.CAP_GSTREAMER, "v4l2": cv2.CAP_V4L2}.get(api, cv2.CAP_ANY)

    def open(self) -> None:
        self.close()
        api = self._api()
        if self.spec.kind == "url":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS]
            cap = cv2.VideoCapture(self.spec.target, cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(self.spec.target, api)
        if not cap.isOpened():
            cap.release()
            hint = {"device": " (is it plugged in? list cameras with `v4l2-ctl --list-devices`)",
                    "url": " (is the stream up and reachable?)",
                    "gstreamer": " (check the pipeline with gst-launch-1.0; it must end in appsink)",
                    "video": " (unsupported codec or not a video)"}.get(self.spec.kind, "")
            raise SourceError(f"cannot open {self.role} source {self.description}{hint}")
        if self.spec.kind == "device":
            self._configure_device(cap)
        fps = cap.get(cv2.CAP_PROP_FPS)
        if self.nominal_fps is None and fps and np.isfinite(fps) and 0 < fps < 1000:
            self.nominal_fps = float(fps)
        self.cap = cap

    def _configure_device(self, cap: cv2.VideoCapture) -> None:
        fourcc = self.spec.options.get("fourcc")
        if fourcc:  # must precede the size: drivers pick sizes per pixel format
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc.ljust(4)[:4]))
        for prop, name in ((cv2.CAP_PROP_FRAME_WIDTH, "width"), (cv2.CAP_PROP_FRAME_HEIGHT, "height"),
                           (cv2.CAP_PROP_FPS, "fps")):
            value = self.spec.option(name)
            if value:
                cap.set(prop, value)
        if self.spec.flag("raw"):  # Y16 thermal cameras: keep the 16-bit counts instead of a BGR rendering
            cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # a deep driver queue only adds latency

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self.cap is None:
            raise SourceError(f"{self.role} source {self.description} is not open")
        ok, img = self.cap.read()
        if not ok or img is None:
            if self.reconnects:
                raise SourceError(f"{self.role} source {self.description} stopped delivering frames")
            if self.loop and self.index > 0:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, img = self.cap.read()
            if not ok or img is None:
                return None
        img = self._fix_layout(img)
        media_t = None if self.reconnects else self.index / (self.nominal_fps or 30.0)
        self.index += 1
        return img, media_t

    def _fix_layout(self, img: np.ndarray) -> np.ndarray:
        # Some OpenCV releases return raw 16-bit V4L2 frames as one flat row (opencv#27166).
        if img.ndim == 2 and img.shape[0] == 1 and self.cap is not None:
            w = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            h = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            if w * h == img.shape[1]:
                img = img.reshape(h, w)
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        return img

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class ImageFolderSource(FrameSource):
    """A folder of images (8- or 16-bit) replayed in natural order (frame2 before frame10)."""

    paced = True

    def __init__(self, spec: SourceSpec, role: str):
        super().__init__(spec, role)
        self.nominal_fps = self.nominal_fps or 10.0
        self.loop = spec.flag("loop")
        self.files: list[Path] = []
        self.index = 0

    def open(self) -> None:
        folder = Path(str(self.spec.target))
        self.files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                            key=lambda p: _natural_key(p.name))
        if not self.files:
            raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {self.role} folder {folder}")

    def read(self) -> tuple[np.ndarray, float | None] | None:
        n = len(self.files)
        if self.index >= n and not self.loop:
            return None
        path = self.files[self.index % n]
        media_t = self.index / self.nominal_fps
        self.index += 1
        try:
            return read_image(path), media_t
        except ImageReadError as exc:  # one corrupt or oversized frame: the reader skips and counts it
            raise FrameSkipped(f"{self.role} frame {path.name}: {exc}") from None

    def close(self) -> None:
        pass


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def _has_backend(name: str) -> bool:
    try:
        return any(cv2.videoio_registry.getBackendName(b) == name for b in cv2.videoio_registry.getBackends())
    except (AttributeError, cv2.error):
        return False


def open_source(spec: SourceSpec | str, role: str, options: str | dict | None = None) -> FrameSource:
    """Build (not yet open) the source for ``spec``; raises SourceError for an unusable string."""
    if isinstance(spec, str):
        spec = parse_source(spec, options)
    if spec.kind == "synthetic":
        from .synthetic_stream import SyntheticSource
        return SyntheticSource(spec, role)
    if spec.kind == "folder":
        return ImageFolderSource(spec, role)
    return CaptureSource(spec, role)
