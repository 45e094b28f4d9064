"""The records that travel through the live pipeline: one captured frame, one paired set."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IR, VIS = "ir", "vis"
ROLES = (IR, VIS)


@dataclass
class Frame:
    """One image from one source, stamped when it was captured (or at its media time offline)."""

    image: np.ndarray   # uint8 / uint16, H×W or H×W×3 (BGR)
    t: float            # seconds; time.monotonic() live, media time when replaying as fast as possible
    seq: int            # index of the frame in its source since the pipeline started
    role: str           # "ir" or "vis"


@dataclass
class FrameSet:
    """What the pipeline processes next: a matched pair, or one frame while the other source is down."""

    ir: Frame | None
    vis: Frame | None

    @property
    def mode(self) -> str:
        """'paired', 'ir_only' or 'vis_only' (shown in the HUD and written per frame)."""
        if self.ir is not None and self.vis is not None:
            return "paired"
        return "ir_only" if self.ir is not None else "vis_only"

    @property
    def skew(self) -> float | None:
        """Capture-time difference IR − visible in seconds, None for a single frame."""
        if self.ir is None or self.vis is None:
            return None
        return self.ir.t - self.vis.t

    @property
    def t(self) -> float:
        """The later capture time of the set (what end-to-end latency is measured from)."""
        return max(f.t for f in (self.ir, self.vis) if f is not None)
