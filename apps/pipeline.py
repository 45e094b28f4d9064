"""The live pipeline: two sources → pairing → registration + pre-processing → fusion → detection
→ overlay → sinks, with per-stage timing. ``run_live(LiveConfig(...))`` is the whole app.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.imaging.color import is_flat_pair

from .detection import Detections, create_detector
from .frames import IR, ROLES, VIS, FrameSet
from .overlay import draw_detections, draw_hud, hud_lines, side_by_side
from .pairing import END, PairedStream
from .preprocess import Planes, content_box, create_preprocessor, letterbox_matrix, sampling_matrix
from .reader import SourceReader
from .registration import Homography, check_homography, load_homography
from .runtime import set_threads, tune_allocator
from .sinks import FrameFolderSink, JsonlSink, MjpegSink, VideoFileSink, WindowSink, has_display
from .sources import FrameSource, open_source
from .overlap import open_frames
from .stats import LatencyHistogram, LiveStats, RateMeter, StageTimer, rss_mb

log = logging.getLogger(__name__)

STAGES = ("preprocess", "fusion", "compose", "detect", "overlay", "sink")


@dataclass
class LiveConfig:
    """Everything ``tdfusion-edge live`` can be asked to do; the defaults are the CLI's."""

    ir: str | FrameSource = "synthetic"
    vis: str | FrameSource = "synthetic"
    ir_options: str | dict | None = None          # "k=v,k=v" (see apps.sources)
    vis_options: str | dict | None = None
    homography: str | Homography | None = None    # file, object, or None (co-aligned cameras)
    weights: str | None = None                    # fusion checkpoint; None: the package's default
    backend: object = "auto"                      # export backend kind, or a ready FusionBackend
    device: str = "auto"
    half: bool = False
    det: str = "none"                             # 'none', yolov8n.pt, yolov8n.yaml, a .onnx/.engine path
    det_conf: float = 0.25
    det_imgsz: int | None = None
    det_precision: str = "fp32"                   # 'int8': gated INT8 ONNX on onnxruntime (needs size, calib once)
    size: tuple[int, int] | None = None           # processing grid (H, W); None: the visible frame's size
    stretch: str = "minmax"                       # 'minmax' (released inference) or 'none'
    preprocess: str = "auto"                      # 'auto', 'numpy', 'cuda', 'pycuda', 'cupy'
    realtime: bool = True                         # False: replay files as fast as possible, lose nothing
    max_skew_ms: float = 40.0
    stall_timeout: float | None = None            # s without frames before a live source counts as down
    queue_size: int = 2
    overlap: bool | None = None                   # detect frame n while fusing n+1; None: on with a CPU detector
    calib: str | None = None                      # real pairs to calibrate INT8 on (onnxruntime-int8, auto)
    max_frames: int | None = None
    duration: float | None = None                 # seconds
    view: str = "fused"                           # 'fused' or 'side-by-side'
    hud: bool = True
    show: bool = False
    save: str | None = None                       # video file
    save_fps: float | None = None
    frames_dir: str | None = None
    jsonl: str | None = None
    serve: int | None = None                      # MJPEG port
    serve_host: str = "127.0.0.1"
    stats_path: str | None = None
    output_dir: str | None = None                 # fills save/jsonl/stats_path that are unset
    threads: int | None = None
    warmup_frames: int = 10
    cache_dir: str | None = None
    extra: dict = field(default_factory=dict)     # recorded in the stats as given

    def resolved(self) -> "LiveConfig":
        """A copy with ``output_dir`` expanded into the individual outputs."""
        from dataclasses import replace
        if not self.output_dir:
            return replace(self)
        out = Path(self.output_dir)
        return replace(self, save=self.save or str(out / "live.mp4"), jsonl=self.jsonl or str(out / "detections.jsonl"),
                       stats_path=self.stats_path or str(out / "stats.json"))


class Geometry:
    """Where each source lands in the processing grid: the visible frame letterboxed into the grid,
    the IR frame through the homography and then the same letterbox (one resampling each)."""

    def __init__(self, homography: Homography | None, size: tuple[int, int] | None):
        self.homography = homography
        self.requested = size
        self.grid: tuple[int, int] | None = None
        self.vis_hw: tuple[int, int] | None = None
        self.m_vis = self.m_ir = None
        self.content: tuple[int, int, int, int] | None = None  # letterboxed image area, None = whole grid
        self._ir_hw: tuple[int, int] | None = None
        self.vis_ref_hw: tuple[int, int] | None = None  # first visible size: what the homography maps onto
        self.resolution_changes = 0
        self.warnings: list[str] = []

    def update(self, ir_hw: tuple[int, int] | None, vis_hw: tuple[int, int] | None) -> None:
        """Fix the grid at the first visible frame (IR frames before it get a provisional one); a visible
        stream that later changes resolution keeps the grid and gets its letterbox and IR warp re-derived."""
        if vis_hw is not None and vis_hw != self.vis_hw:
            if self.vis_hw is None:
                self.vis_ref_hw = vis_hw
                self.grid = tuple(self.requested or vis_hw)
            else:
                self.resolution_changes += 1
                (log.warning if self.resolution_changes == 1 else log.debug)(
                    "visible stream changed resolution %dx%d -> %dx%d; re-deriving its geometry (output stays "
                    "%dx%d; counted in the stats)", self.vis_hw[1], self.vis_hw[0], vis_hw[1], vis_hw[0],
                    self.grid[1], self.grid[0])
            self.vis_hw = vis_hw
            self.m_vis = sampling_matrix(letterbox_matrix(vis_hw, self.grid))
            box = content_box(vis_hw, self.grid)
            self.content = None if box == (0, self.grid[0], 0, self.grid[1]) else box
            self._ir_hw = None
        if ir_hw is not None and ir_hw != self._ir_hw:
            self._ir_hw = ir_hw
            if self.vis_hw is None:  # the visible camera has not been seen yet: just fit the IR frame
                self.grid = self.grid or tuple(self.requested or ir_hw)
                self.m_ir = sampling_matrix(letterbox_matrix(ir_hw, self.grid))
                return
            h = self.homography
            # The homography maps IR onto the first visible size; a later visible size is the same view rescaled.
            ref = self.vis_ref_hw
            ir_size, vis_size = (ir_hw[1], ir_hw[0]), (ref[1], ref[0])
            if h is None:
                h = Homography.identity() if ir_size == vis_size else Homography.scaling(ir_size, vis_size)
                if ir_size != vis_size and not self.resolution_changes:
                    log.warning("no --homography: assuming co-aligned cameras, IR %dx%d stretched onto visible %dx%d",
                                *ir_size, *vis_size)
            if not self.resolution_changes:
                for w in check_homography(h, ir_size, vis_size):
                    log.warning("homography: %s", w)
                    self.warnings.append(w)
            to_grid = letterbox_matrix(self.vis_hw, self.grid)
            if self.vis_hw != ref:
                to_grid = to_grid @ Homography.scaling(vis_size, (self.vis_hw[1], self.vis_hw[0])).matrix
            self.m_ir = sampling_matrix(to_grid @ h.matrix)


class FrameProcessor:
    """Pre-processing, fusion, chroma re-attachment and detection of one ``FrameSet``."""

    def __init__(self, config: LiveConfig, geometry: Geometry, timer: StageTimer):
        self.config = config
        self.geometry = geometry
        self.timer = timer
        self.pre = create_preprocessor(config.preprocess)
        self._own_backend = not hasattr(config.backend, "fuse")
        self.backend = self._create_backend() if self._own_backend else config.backend
        try:
            self.detector = create_detector(config.det, imgsz=config.det_imgsz, conf=config.det_conf,
                                            device=config.device, half=config.half, precision=config.det_precision,
                                            frame_hw=config.size, calib=config.calib, cache_dir=config.cache_dir)
        except Exception:
            if self._own_backend:
                self.backend.close()
            raise
        log.info("pre-processing: %s; fusion: %s; detector: %s", self.pre.name,
                 getattr(self.backend, "name", type(self.backend).__name__), self.detector.name)

    def _create_backend(self):
        # Loaded before the sources start, so that no camera frame waits for an export or engine build.
        try:
            from tdfusion_edge.export.backends import create_backend
        except ImportError as exc:
            raise TDFusionError(f"fusion backends are not available in this installation ({exc})") from None
        size = tuple(self.config.size) if self.config.size else None  # known: a static engine is built now
        return create_backend(self.config.backend, weights=self.config.weights, device=self.config.device,
                              half=self.config.half, imgsz=size, cache_dir=self.config.cache_dir,
                              calib=self.config.calib)

    def process(self, fs: FrameSet) -> tuple[np.ndarray, Detections, dict[str, Planes]]:
        """Returns the output frame (BGR uint8, processing-grid size), its detections and the planes."""
        out, planes = self.prepare(fs)
        return out, self.detect(out), planes

    def detect(self, out: np.ndarray) -> Detections:
        """Detection on a composed output frame (the stage that apps.overlap runs beside fusion)."""
        with self.timer.stage("detect"):
            return self.detector.detect(out)

    def prepare(self, fs: FrameSet, timer: StageTimer | None = None) -> tuple[np.ndarray, dict[str, Planes]]:
        """Pre-processing, fusion and compose of one ``FrameSet``, timed into ``timer`` (default: the run's)."""
        timer = timer or self.timer
        g = self.geometry
        g.update(None if fs.ir is None else fs.ir.image.shape[:2], None if fs.vis is None else fs.vis.image.shape[:2])
        planes: dict[str, Planes] = {}
        with timer.stage("preprocess"):
            if fs.ir is not None:
                planes[IR] = self.pre.planes(fs.ir.image, g.m_ir, g.grid)
            if fs.vis is not None:
                planes[VIS] = self.pre.planes(fs.vis.image, g.m_vis, g.grid)
        if len(planes) == 2:
            with timer.stage("fusion"):
                fused = self.backend.fuse(planes[IR].y, planes[VIS].y)
            with timer.stage("compose"):
                # A flat pair (lens caps on, all-white frames) is not stretched: it stays near-constant.
                stretch = self.config.stretch == "minmax" and not _flat_pair(planes, g.content)
                if g.content is not None:
                    fused = _blank_padding(fused, g.content, stretch=stretch)
                crcb = self.pre.merge_chroma(planes[VIS].crcb, planes[IR].crcb)
                out = self.pre.compose(fused, crcb, stretch=stretch)
        else:  # one source is down: show what the other one sees, unfused and unstretched
            only = next(iter(planes.values()))
            with timer.stage("compose"):
                out = self.pre.compose(only.y, only.crcb, stretch=False)
        return out, planes

    def source_views(self, planes: dict[str, Planes]) -> list[np.ndarray]:
        """IR and visible as they enter fusion (registered, in the grid); black where missing."""
        h, w = self.geometry.grid
        views = []
        for role in ROLES:
            p = planes.get(role)
            views.append(np.zeros((h, w, 3), np.uint8) if p is None else self.pre.compose(p.y, p.crcb, stretch=False))
        return views

    def close(self) -> None:
        for closer in (getattr(self.backend, "close", None) if self._own_backend else None,
                       self.detector.close, self.pre.close):
            if closer is not None:
                try:
                    closer()
                except Exception as exc:  # closing must not hide the run's own result
                    log.warning("error while closing: %s", exc)


def _flat_pair(planes: dict[str, Planes], box: tuple[int, int, int, int] | None) -> bool:
    """``imaging.is_flat_pair`` on the image area of the grid (letterbox bars would look like contrast)."""
    y0, y1, x0, x1 = box or (0, None, 0, None)
    return is_flat_pair(np.asarray(planes[IR].y)[y0:y1, x0:x1], np.asarray(planes[VIS].y)[y0:y1, x0:x1])


def _blank_padding(fused: np.ndarray, box: tuple[int, int, int, int], stretch: bool) -> np.ndarray:
    """Letterbox bars are black; with the min/max stretch they take the image's minimum, so that
    what the network made of the padding does not enter the stretch."""
    y0, y1, x0, x1 = box
    out = np.array(fused, dtype=np.float32, copy=True)
    lo = out[y0:y1, x0:x1].min() if stretch else 0.0
    out[:y0], out[y1:], out[:, :x0], out[:, x1:] = lo, lo, lo, lo
    return out


def _build_sinks(cfg: LiveConfig, fps_hint: float | None) -> list:
    sinks = []
    if cfg.show:
        if has_display():
            sinks.append(WindowSink())
        else:
            log.warning("--show: no display here (no DISPLAY/WAYLAND_DISPLAY or no GUI in OpenCV); "
                        "use --serve PORT to watch from a browser")
    if cfg.save:
        sinks.append(VideoFileSink(cfg.save, cfg.save_fps or fps_hint or 15.0))
    if cfg.frames_dir:
        sinks.append(FrameFolderSink(cfg.frames_dir))
    if cfg.jsonl:
        sinks.append(JsonlSink(cfg.jsonl))
    if cfg.serve is not None:
        sinks.append(MjpegSink(cfg.serve, cfg.serve_host))
    return sinks


def _open_readers(cfg: LiveConfig, wakeup: threading.Event) -> dict[str, SourceReader]:
    sources = {}
    for role, spec, opts in ((IR, cfg.ir, cfg.ir_options), (VIS, cfg.vis, cfg.vis_options)):
        sources[role] = spec if isinstance(spec, FrameSource) else open_source(spec, role, opts)
    # A camera paces itself and cannot wait, so one camera makes the whole run real-time, and both
    # streams then share the monotonic clock that pairing compares.
    live_camera = any(s.reconnects and not s.paced for s in sources.values())
    realtime = cfg.realtime or live_camera
    if not cfg.realtime and live_camera:
        log.warning("--no-realtime ignored: a live camera cannot be replayed faster than it captures")
    readers = {role: SourceReader(src, role, realtime=realtime, queue_size=cfg.queue_size if realtime else 4,
                                  on_frame=wakeup) for role, src in sources.items()}
    t0 = time.monotonic()
    started = []
    try:
        for reader in readers.values():
            reader.start(t0)
            started.append(reader)
    except Exception:
        for reader in started:
            reader.stop()
        raise
    return readers


def run_live(config: LiveConfig, stop: threading.Event | None = None) -> LiveStats:
    """Run the live pipeline until the input ends, ``max_frames``/``duration`` is reached, ``stop`` is
    set, a window is closed, or Ctrl-C / SIGTERM; always closes outputs and returns the run's stats.
    A second Ctrl-C while outputs close is ignored (with a note), so the stats are still written."""
    restore_sigint = hold_repeated_interrupts()
    try:
        return _run_live(config, stop)
    finally:
        restore_sigint()


def _run_live(config: LiveConfig, stop: threading.Event | None) -> LiveStats:
    cfg = config.resolved()
    stop = stop or threading.Event()
    tune_allocator()
    set_threads(cfg.threads)
    homography = cfg.homography
    if isinstance(homography, (str, Path)):
        homography = load_homography(homography)
    if cfg.stretch not in ("minmax", "none"):
        raise TDFusionError(f"--stretch must be minmax or none, not {cfg.stretch!r}")
    if cfg.view not in ("fused", "side-by-side"):
        raise TDFusionError(f"--view must be fused or side-by-side, not {cfg.view!r}")

    timer = StageTimer()
    stats = LiveStats(config={k: str(v) for k, v in vars(cfg).items() if k not in ("extra",)} | cfg.extra)
    stats.rss_mb["start"] = round(rss_mb(), 1)
    geometry = Geometry(homography, tuple(cfg.size) if cfg.size else None)
    processor = FrameProcessor(cfg, geometry, timer)
    wakeup = threading.Event()
    readers: dict[str, SourceReader] = {}
    stream: PairedStream | None = None
    frames = None                                 # apps.overlap: prepared frames, overlapped or not
    sinks: list = []
    restore_sigterm = _install_sigterm(stop)
    t_start, cpu_start = time.monotonic(), time.process_time()
    out_marks: dict[int, float] = {}  # output time of frame 0, of the first frame after warm-up, and the latest
    rate = RateMeter()
    skews = LatencyHistogram()
    peak_rss = stats.rss_mb["start"]
    try:
        readers = _open_readers(cfg, wakeup)
        stream = PairedStream(readers[IR], readers[VIS], cfg.max_skew_ms / 1000.0, realtime=readers[IR].realtime,
                              stall_timeout=cfg.stall_timeout or _stall_timeout(readers), wakeup=wakeup)
        sinks = _build_sinks(cfg, readers[VIS].source.nominal_fps)
        frames = open_frames(stream, processor, timer, cfg.overlap)
        stats.overlap = frames.overlapped
        stats.stopped_by = "end of input"
        while True:
            if stop.is_set():
                stats.stopped_by = "stop requested"
                break
            if cfg.max_frames is not None and stats.frames_out >= cfg.max_frames:
                stats.stopped_by = "max frames"
                break
            if cfg.duration is not None and time.monotonic() - t_start >= cfg.duration:
                stats.stopped_by = "duration"
                break
            if any(s.stop_requested for s in sinks):
                stats.stopped_by = "window closed"
                break
            got = frames.next(timeout=0.25)
            if got is END:
                break
            if got is None:
                continue
            item, out, planes = got.item, got.out, got.planes
            timer.last.update(got.stage_ms)       # the HUD and the record show this frame's times
            t_proc = time.perf_counter()
            dets = processor.detect(out)
            with timer.stage("overlay"):
                canvas = _draw(cfg, processor, item, out, dets, planes, rate, timer, readers, stream)
            record = _record(stats.frames_out, item, dets, timer, readers[IR].realtime)
            with timer.stage("sink"):
                for sink in sinks:
                    sink.write(canvas, record)
            now = time.monotonic()
            done = time.perf_counter()
            timer.record("total", sum(got.stage_ms.values()) + (done - t_proc) * 1000.0)   # work on this frame
            timer.record("pipeline", (done - got.taken) * 1000.0)   # paired → written, incl. waits between stages
            if readers[IR].realtime:
                timer.record("e2e", (now - item.t) * 1000.0)
            rate.tick(now)
            if stats.frames_out in (0, cfg.warmup_frames):
                out_marks[stats.frames_out] = now
            out_marks[-1] = now
            stats.frames_out += 1
            setattr(stats, f"{item.mode}_out", getattr(stats, f"{item.mode}_out") + 1)
            if item.skew is not None:
                skews.add(abs(item.skew) * 1000.0)
            if stats.frames_out == cfg.warmup_frames:
                stats.rss_mb["after_warmup"] = round(rss_mb(), 1)
            if stats.frames_out % 10 == 0:
                peak_rss = max(peak_rss, rss_mb())
    except KeyboardInterrupt:
        stats.stopped_by = "interrupted"
        log.warning("interrupted: closing outputs")
    finally:
        if frames is not None:
            frames.close()
        for reader in readers.values():
            reader.stop()
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:  # one failing sink must not leave the others (the video) unclosed
                log.warning("error while closing a sink: %s", exc)
        processor.close()
        restore_sigterm()
    stats.cpu_s = round(time.process_time() - cpu_start, 3)
    _fill_stats(stats, readers, stream, timer, out_marks, skews, cfg, t_start, peak_rss)
    stats.resolution_changes = geometry.resolution_changes
    if cfg.stats_path:
        stats.write_json(cfg.stats_path)
    return stats


def _draw(cfg: LiveConfig, processor: FrameProcessor, item: FrameSet, out: np.ndarray, dets: Detections,
          planes: dict[str, Planes], rate: RateMeter, timer: StageTimer, readers: dict[str, SourceReader],
          stream: PairedStream) -> np.ndarray:
    """Boxes on the fused frame, the optional side-by-side panels, and the HUD."""
    canvas = draw_detections(out, dets)
    if cfg.view == "side-by-side":
        canvas = side_by_side(processor.source_views(planes) + [canvas], ["IR", "visible", "fused"])
    if cfg.hud:
        dropped = sum(r.dropped for r in readers.values()) + stream.stale_skipped
        skew = None if item.skew is None else item.skew * 1000.0
        lines, alerts = hud_lines(rate.fps, timer.last, dropped, sum(stream.pairer.unmatched.values()), item.mode,
                                  skew, {role: readers[role].fps for role in ROLES})
        draw_hud(canvas, lines, alerts)
    return canvas


def _stall_timeout(readers: dict[str, SourceReader]) -> float:
    rates = [r.source.nominal_fps for r in readers.values() if r.source.nominal_fps]
    return max(1.0, 3.0 / min(rates)) if rates else 1.0


def _record(index: int, fs: FrameSet, dets: Detections, timer: StageTimer, realtime: bool) -> dict:
    rec = {"frame": index, "mode": fs.mode,
           "ir_t": None if fs.ir is None else round(fs.ir.t, 4), "vis_t": None if fs.vis is None else round(fs.vis.t, 4),
           "ir_seq": None if fs.ir is None else fs.ir.seq, "vis_seq": None if fs.vis is None else fs.vis.seq,
           "skew_ms": None if fs.skew is None else round(fs.skew * 1000.0, 2),
           "clock": "monotonic" if realtime else "media",
           "detections": dets.to_records(),
           "latency_ms": {k: round(timer.last[k], 2) for k in STAGES if k in timer.last and k != "sink"}}
    return rec


def _fill_stats(stats: LiveStats, readers, stream, timer: StageTimer, out_marks: dict[int, float],
                skews: LatencyHistogram, cfg: LiveConfig, t_start: float, peak_rss: float) -> None:
    stats.duration_s = round(time.monotonic() - t_start, 3)
    for role, r in readers.items():
        stats.frames_in[role] = r.captured
        stats.dropped_queue[role] = r.dropped
        stats.reconnects[role] = r.reconnects
        stats.unreadable[role] = getattr(r, "skipped", 0)
        stats.source_fps[role] = round(r.fps, 2)
    if stream is not None:
        stats.unmatched = dict(stream.pairer.unmatched)
        stats.pairs = stream.pairer.pairs
        stats.stale_skipped = stream.stale_skipped
    # FPS after warm-up (first frames pay for lazy initialisation); short runs fall back to frame 0.
    warm = cfg.warmup_frames if cfg.warmup_frames in out_marks and stats.frames_out - cfg.warmup_frames >= 2 else 0
    stats.warmup_frames = warm
    if stats.frames_out - warm >= 2 and out_marks[-1] > out_marks[warm]:
        stats.output_fps = round((stats.frames_out - warm - 1) / (out_marks[-1] - out_marks[warm]), 3)
    if skews.n:
        stats.skew_ms = {k: v for k, v in skews.summary().items() if k in ("mean", "p50", "p99", "max")}
    stats.latency_ms = timer.summaries()
    stats.rss_mb["end"] = round(rss_mb(), 1)
    stats.rss_mb["peak_sampled"] = round(max(peak_rss, stats.rss_mb["end"]), 1)


def hold_repeated_interrupts():
    """The first Ctrl-C interrupts as usual; later ones only log, so closing the video and writing the
    stats (and the CLI's summary, which holds it too) cannot be cut short. Main thread only; nests;
    returns the function that restores the previous handler."""
    current = signal.getsignal(signal.SIGINT)
    if (threading.current_thread() is not threading.main_thread() or current is signal.SIG_IGN
            or getattr(current, "holds_repeats", False)):
        return lambda: None
    presses = [0]

    def on_sigint(signum, frame):
        presses[0] += 1
        if presses[0] == 1:
            raise KeyboardInterrupt
        log.warning("still closing outputs and writing stats; Ctrl-\\ (SIGQUIT) aborts without them")

    on_sigint.holds_repeats = True
    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except (ValueError, OSError):
        return lambda: None
    return lambda: signal.signal(signal.SIGINT, previous)


def _install_sigterm(stop: threading.Event):
    """SIGTERM ends the run like Ctrl-C does (outputs closed); only possible on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    except (ValueError, OSError):
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)
