"""One thread per source: capture, time-stamp, queue, and reopen a camera that went away.

Real-time mode keeps a small queue where the newest frame wins (old frames are overwritten and
counted), stamps frames with ``time.monotonic()`` and replays recorded media at its own rate.
As-fast-as-possible mode (recorded media only) loses nothing: the queue blocks, and frames carry
their media time so the two streams still pair by content time.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

from .frames import Frame
from .sources import FrameSkipped, FrameSource, SourceError

log = logging.getLogger(__name__)

STARTING, RUNNING, RECONNECTING, ENDED, FAILED = "starting", "running", "reconnecting", "ended", "failed"
# A recorded source with this many unreadable frames in a row is given up on.
MAX_CONSECUTIVE_ERRORS = 20


class Backoff:
    """Reconnection delays: ``first``, doubling up to ``limit``; reset after a good frame."""

    def __init__(self, first: float = 0.25, limit: float = 5.0):
        self.first, self.limit = first, limit
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.limit, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first


class SourceReader:
    """Reads ``source`` in a daemon thread into a bounded queue; thread-safe getters for the pipeline."""

    def __init__(self, source: FrameSource, role: str, *, realtime: bool = True, queue_size: int = 2,
                 backoff: Backoff | None = None, on_frame: threading.Event | None = None):
        self.source = source
        self.role = role
        self.realtime = realtime
        self.queue: collections.deque[Frame] = collections.deque()
        self.queue_size = max(1, queue_size)
        self.backoff = backoff or Backoff()
        self.on_frame = on_frame
        self.state = STARTING
        self.error: str | None = None
        self.captured = 0
        self.dropped = 0
        self.reconnects = 0
        self.skipped = 0          # unreadable frames skipped (e.g. a corrupt file in an image folder)
        self.last_frame_time: float | None = None
        self._stamps: collections.deque[float] = collections.deque(maxlen=30)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    # -- control -----------------------------------------------------------------------------
    def start(self, t0: float | None = None) -> None:
        """Open the source once here (a failure is the caller's one-line error), then start the thread."""
        self.source.open()
        self._t0 = time.monotonic() if t0 is None else t0
        self.state = RUNNING
        self._thread = threading.Thread(target=self._run, name=f"reader-{self.role}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to end and wait a little; the source is closed by the thread itself."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s reader did not stop within %.1f s (blocked in the driver?)", self.role, timeout)

    # -- consumer side -------------------------------------------------------------------------
    def get(self) -> Frame | None:
        """Oldest queued frame, or None when the queue is empty (never blocks)."""
        with self._cond:
            if not self.queue:
                return None
            frame = self.queue.popleft()
            self._cond.notify_all()
            return frame

    def get_all(self) -> list[Frame]:
        """Every queued frame, oldest first."""
        with self._cond:
            frames = list(self.queue)
            self.queue.clear()
            self._cond.notify_all()
            return frames

    @property
    def has_frames(self) -> bool:
        return bool(self.queue)

    @property
    def finished(self) -> bool:
        """The source ended or failed for good (no more frames will come)."""
        return self.state in (ENDED, FAILED)

    @property
    def fps(self) -> float:
        """Measured capture rate over the last 30 frames (real-time clock)."""
        stamps = list(self._stamps)
        if len(stamps) < 2 or stamps[-1] <= stamps[0]:
            return 0.0
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def age(self, now: float | None = None) -> float:
        """Seconds since the last captured frame (since start when none yet)."""
        now = time.monotonic() if now is None else now
        return now - (self.last_frame_time if self.last_frame_time is not None else self._t0)

    # -- producer side -------------------------------------------------------------------------
    def _run(self) -> None:
        errors = 0
        try:
            while not self._stop.is_set():
                try:
                    item = self.source.read()
                except SourceError as exc:
                    if self.source.reconnects and not isinstance(exc, FrameSkipped):
                        self._reconnect(str(exc))
                        continue
                    errors += 1
                    self.skipped += 1  # a counted skip: the stream goes on with the next frame
                    log.warning("%s: skipping unreadable frame: %s", self.role, exc)
                    if errors >= MAX_CONSECUTIVE_ERRORS:
                        self._finish(FAILED, f"{errors} unreadable frames in a row: {exc}")
                        return
                    continue
                except Exception as exc:  # a driver fault must not kill the app; treat it as a disconnect
                    if self.source.reconnects:
                        self._reconnect(f"{type(exc).__name__}: {exc}")
                        continue
                    self._finish(FAILED, f"{type(exc).__name__}: {exc}")
                    return
                if item is None:
                    self._finish(ENDED, None)
                    return
                errors = 0
                self._deliver(*item)
        finally:
            self.source.close()

    def _deliver(self, image, media_t: float | None) -> None:
        if self.realtime:
            if self.source.paced and media_t is not None:
                self._sleep_until(self._t0 + media_t)  # replay recorded media at its own rate
            stamp = time.monotonic()
        else:
            stamp = self._t0 + (media_t or 0.0)
        now = time.monotonic()
        frame = Frame(image, stamp, self.captured, self.role)
        with self._cond:
            if self.realtime:
                while len(self.queue) >= self.queue_size:
                    self.queue.popleft()
                    self.dropped += 1
            else:
                while len(self.queue) >= self.queue_size and not self._stop.is_set():
                    self._cond.wait(0.1)
            self.queue.append(frame)
            self.captured += 1
            self.last_frame_time = now
            self._stamps.append(now)
            if self.state != RUNNING:
                log.info("%s source is back", self.role)
            self.state = RUNNING
        self.backoff.reset()
        if self.on_frame is not None:
            self.on_frame.set()

    def _sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)

    def _reconnect(self, reason: str) -> None:
        if self.state != RECONNECTING:
            log.warning("%s source lost (%s); reopening with back-off", self.role, reason)
        self.state = RECONNECTING
        self.error = reason
        if self.on_frame is not None:
            self.on_frame.set()  # wake the pipeline so it switches to single-source frames now
        self.source.close()
        while not self._stop.is_set():
            self._stop.wait(self.backoff.next())
            if self._stop.is_set():
                return
            try:
                self.source.open()
            except Exception as exc:  # still unplugged: keep trying with a longer delay
                log.debug("%s reopen failed: %s", self.role, exc)
                continue
            self.reconnects += 1
            # A recorded source that paces from t0 would now "catch up" in a burst; restart its clock.
            if self.realtime and self.source.paced:
                self._t0 = time.monotonic() - (getattr(self.source, "index", 0) / (self.source.nominal_fps or 30.0))
            return

    def _finish(self, state: str, error: str | None) -> None:
        with self._cond:
            self.state = state
            self.error = error
            self._cond.notify_all()
        if error:
            log.warning("%s source failed: %s", self.role, error)
        else:
            log.info("%s source ended after %d frames", self.role, self.captured)
        if self.on_frame is not None:
            self.on_frame.set()
