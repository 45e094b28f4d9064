"""Pairing IR and visible frames by capture time, and the paired stream the pipeline pulls from.

``TimestampPairer`` is pure bookkeeping (tested with jittered stamps): every frame is matched to
the nearest frame of the other stream within ``max_skew`` seconds, in time order, and a frame that
can no longer get a partner is counted as unmatched. A pair is emitted only once no later frame
could be a closer partner: the next frame of the other stream is already there, or that stream's
clock (``now`` live, its newest stamp otherwise) has passed the point where it could be.

``PairedStream`` feeds the pairer from two ``SourceReader``s and falls back to single frames while
one source is down (reconnecting, stalled or finished), so a lost camera never stops the app.
"""
from __future__ import annotations

import collections
import threading
import time

from .frames import IR, ROLES, VIS, Frame, FrameSet
from .reader import RECONNECTING, SourceReader

END = "end"  # sentinel returned by PairedStream.next when both sources are finished


class TimestampPairer:
    """Matches two monotonically stamped streams; counts what it has to drop."""

    def __init__(self, max_skew: float):
        if max_skew <= 0:
            raise ValueError("max_skew must be positive")
        self.max_skew = max_skew
        self.buf: dict[str, collections.deque[Frame]] = {r: collections.deque() for r in ROLES}
        self.latest: dict[str, float] = {r: float("-inf") for r in ROLES}
        self.closed: dict[str, bool] = {r: False for r in ROLES}
        self.unmatched: dict[str, int] = {r: 0 for r in ROLES}
        self.pairs = 0

    def push(self, frame: Frame) -> None:
        """Add the next frame of its stream (stamps must not decrease within a stream)."""
        if frame.t < self.latest[frame.role]:
            self.unmatched[frame.role] += 1  # a clock that jumped back cannot be paired safely
            return
        self.buf[frame.role].append(frame)
        self.latest[frame.role] = frame.t

    def close(self, role: str) -> None:
        """No more frames will come from ``role`` (for now): decide the pairs that waited on it.
        Frames of the other stream left without a partner stay pending for ``take``/``discard``."""
        self.closed[role] = True

    def reopen(self, role: str) -> None:
        """``role`` delivers again (a camera came back)."""
        self.closed[role] = False

    def _future_bound(self, role: str, now: float | None) -> float:
        # The earliest stamp a not-yet-seen frame of ``role`` can carry.
        if self.closed[role]:
            return float("inf")
        return max(self.latest[role], now if now is not None else float("-inf"))

    def pop_ready(self, now: float | None = None) -> list[tuple[Frame, Frame]]:
        """Every pair that is final given what has arrived (and, live, the current time ``now``)."""
        out: list[tuple[Frame, Frame]] = []
        a_buf, b_buf = self.buf[IR], self.buf[VIS]
        while True:
            if not a_buf or not b_buf:
                if not self._drop_hopeless(now):
                    break
                continue
            a, b = a_buf[0], b_buf[0]
            if b.t < a.t - self.max_skew:
                self._drop(VIS)
                continue
            if a.t < b.t - self.max_skew:
                self._drop(IR)
                continue
            # Within the skew; the earlier frame's stream might still offer a closer partner.
            early, late = (VIS, IR) if b.t <= a.t else (IR, VIS)
            early_buf, late_frame = self.buf[early], (a if late == IR else b)
            gap = abs(a.t - b.t)
            if len(early_buf) > 1:
                if abs(early_buf[1].t - late_frame.t) < gap:
                    self._drop(early)
                    continue
            elif self._future_bound(early, now) - late_frame.t < gap:
                break  # wait: the next ``early`` frame could still be closer
            out.append((a_buf.popleft(), b_buf.popleft()))
            self.pairs += 1
        return out

    def _drop(self, role: str) -> None:
        self.buf[role].popleft()
        self.unmatched[role] += 1

    def _drop_hopeless(self, now: float | None) -> bool:
        """Drop a waiting head frame whose partner stream has moved (or will move) past it."""
        for role, other in ((IR, VIS), (VIS, IR)):
            if self.buf[role] and not self.buf[other] and not self.closed[other]:
                if self._future_bound(other, now) > self.buf[role][0].t + self.max_skew:
                    self._drop(role)
                    return True
        return False

    def take(self, role: str) -> list[Frame]:
        """Remove and return the pending frames of ``role`` (used while the other source is down)."""
        frames = list(self.buf[role])
        self.buf[role].clear()
        return frames

    def discard(self, role: str) -> None:
        """Drop the pending frames of ``role`` as unmatched."""
        self.unmatched[role] += len(self.buf[role])
        self.buf[role].clear()

    @property
    def empty(self) -> bool:
        return not self.buf[IR] and not self.buf[VIS]


class PairedStream:
    """Pulls frames from two readers and hands out the next ``FrameSet`` to process."""

    def __init__(self, ir: SourceReader, vis: SourceReader, max_skew: float, *, realtime: bool = True,
                 stall_timeout: float = 1.0, wakeup: threading.Event | None = None):
        self.readers = {IR: ir, VIS: vis}
        self.pairer = TimestampPairer(max_skew)
        self.realtime = realtime
        self.stall_timeout = stall_timeout
        self.wakeup = wakeup or threading.Event()
        self.ready: collections.deque[FrameSet] = collections.deque()
        self.stale_skipped = 0

    def is_down(self, role: str, now: float) -> bool:
        """A source that is reconnecting, finished, or (live) silent for longer than the stall timeout."""
        r = self.readers[role]
        if r.finished and not r.has_frames:
            return True
        if r.state == RECONNECTING:
            return True
        return self.realtime and r.age(now) > self.stall_timeout and not r.has_frames

    def next(self, timeout: float = 0.5) -> FrameSet | str | None:
        """The next set to process, ``END`` when both sources are finished, or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.ready:
                return self.ready.popleft()
            self._pull()
            now = time.monotonic()
            down = [r for r in ROLES if self.is_down(r, now)]
            for role in ROLES:
                (self.pairer.close if role in down else self.pairer.reopen)(role)
            pairs = self.pairer.pop_ready(now if self.realtime else None)
            if pairs:
                return self._hand_out([FrameSet(a, b) for a, b in pairs])
            if len(down) == 2 and all(self.readers[r].finished for r in ROLES) and not self._anything_left():
                return END
            if len(down) == 2 and all(self.readers[r].finished for r in ROLES):
                for role in ROLES:
                    self.pairer.discard(role)
                continue
            if len(down) == 1:
                # The lost stream's pending frames stay: they may still pair (a file that ended
                # mid-way), or the pairer drops them as unmatched once the other stream moves on.
                up = VIS if down[0] == IR else IR
                singles = [FrameSet(f, None) if up == IR else FrameSet(None, f) for f in self.pairer.take(up)]
                if singles:
                    return self._hand_out(singles)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.wakeup.wait(min(remaining, 0.05))
            self.wakeup.clear()

    def _hand_out(self, sets: list[FrameSet]) -> FrameSet:
        if self.realtime and len(sets) > 1:
            # Processing is slower than capture: stay live by skipping to the newest set.
            self.stale_skipped += len(sets) - 1
            return sets[-1]
        self.ready.extend(sets[1:])
        return sets[0]

    def _anything_left(self) -> bool:
        return any(self.readers[r].has_frames for r in ROLES) or not self.pairer.empty

    def _pull(self) -> None:
        if self.realtime:
            for role in ROLES:
                for frame in self.readers[role].get_all():
                    self.pairer.push(frame)
            return
        # As fast as possible: advance the stream that is behind, one frame at a time, so the
        # pairer's buffers stay small and nothing is overwritten.
        for _ in range(8):
            role = min(ROLES, key=lambda r: self.pairer.latest[r])
            frame = self.readers[role].get()
            if frame is None:
                other = VIS if role == IR else IR
                if not self.readers[role].finished:
                    return
                frame = self.readers[other].get()
                if frame is None:
                    return
            self.pairer.push(frame)
