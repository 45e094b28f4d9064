"""Running means of logged scalars: per epoch (for the summary line) and per logging window (TensorBoard)."""
from __future__ import annotations

import math
from collections import defaultdict


class Meters:
    """Sums and counts by name; NaN values (a loss a step does not have) are skipped."""

    def __init__(self) -> None:
        self.epoch: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        self.window: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def add(self, values: dict[str, float]) -> None:
        """Record one step's values."""
        for name, value in values.items():
            if value is None or math.isnan(value):
                continue
            for store in (self.epoch, self.window):
                store[name][0] += float(value)
                store[name][1] += 1

    @staticmethod
    def _means(store: dict[str, list[float]]) -> dict[str, float]:
        return {k: s / n for k, (s, n) in sorted(store.items()) if n}

    def epoch_means(self) -> dict[str, float]:
        """Means since the epoch began."""
        return self._means(self.epoch)

    def take_window(self) -> dict[str, float]:
        """Means since the last call, then start a new window."""
        out = self._means(self.window)
        self.window.clear()
        return out

    def reset_epoch(self) -> None:
        """Start a new epoch (and window)."""
        self.epoch.clear()
        self.window.clear()

    def state_dict(self) -> dict:
        """Sums and counts, so a resumed epoch reports the same means."""
        return {"epoch": {k: list(v) for k, v in self.epoch.items()},
                "window": {k: list(v) for k, v in self.window.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` gave."""
        self.reset_epoch()
        for k, (s, n) in state.get("epoch", {}).items():
            self.epoch[k] = [float(s), int(n)]
        for k, (s, n) in state.get("window", {}).items():
            self.window[k] = [float(s), int(n)]
