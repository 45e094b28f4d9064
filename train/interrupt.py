"""Ctrl-C / SIGTERM during training: finish the current step, write a final checkpoint, stop.

The first signal asks for a stop at the next step boundary (the only place a state can be saved
exactly). A second one repeats that promise; a third quits without saving (the last checkpoint on
disk stays intact: every write is atomic). Signals that arrive while a checkpoint is being written
are held until the write has finished, so no signal can leave a half-written file.
"""
from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("tdfusion_edge.train")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
QUIT_AFTER = 3  # the signal that abandons the final checkpoint


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing ``checkpoint``; the exit code is 128 + ``signum``."""

    def __init__(self, signum: int, checkpoint: Path | None):
        self.signum, self.checkpoint = int(signum), checkpoint
        name = signal.Signals(self.signum).name
        super().__init__(f"stopped by {name}; final checkpoint {checkpoint}")

    @property
    def exit_code(self) -> int:
        """The shell convention: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag the training loop checks after every step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._writing = 0
        self.settled = False  # the final checkpoint is written: later signals change nothing
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.signum is not None

    def install(self) -> bool:
        """Catch the signals (main thread only, where Python can); returns whether it did."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def settle(self) -> None:
        """The stop is done (final checkpoint written): further signals are ignored, not raised.

        The handlers then stay installed, so a late Ctrl-C cannot print a traceback while the process
        exits; a program that goes on afterwards calls ``uninstall``.
        """
        self.settled = True

    def uninstall(self) -> None:
        """Put back the handlers that were there before ``install``."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold off a quitting signal while a checkpoint is written."""
        self._writing += 1
        try:
            yield
        finally:
            # a signal held here is acted on at the step boundary that follows (the loop checks the flag)
            self._writing -= 1

    def _handle(self, signum: int, _frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        name = signal.Signals(signum).name
        if self.settled:
            return  # silent: the process may be exiting, with logging already shut down
        if self._writing:
            log.warning("%s: a checkpoint is being written; it will be finished first", name)
        elif self.count >= QUIT_AFTER:
            log.warning("%s again: quitting without a final checkpoint (the last one written is intact)", name)
            raise KeyboardInterrupt
        elif self.count == 1:
            log.warning("%s: stopping after the current step and writing a final checkpoint "
                        "(signal %d more times to quit without it)", name, QUIT_AFTER - 1)
        else:
            log.warning("%s: still finishing the current step, then the final checkpoint", name)
