"""From a loaded pair to the 8-bit fused outputs, through any fusion backend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tdfusion_edge.imaging import LoadedPair, compose_output, is_flat_pair, stretch_minmax, to_uint8

STRETCH_MODES = ("minmax", "none")


class Fuser(Protocol):
    """Anything with ``fuse(ir_y, vis_y) -> fused_y`` on float32 [0,1] luminance (a FusionBackend)."""

    def fuse(self, ir_y: np.ndarray, vis_y: np.ndarray) -> np.ndarray: ...


@dataclass
class FusedImage:
    """The fused luminance in [0,1] and its 8-bit gray and (when chroma exists) BGR renderings."""

    y: np.ndarray
    gray: np.ndarray
    color: np.ndarray | None


def postprocess(y: np.ndarray, stretch: str = "minmax", flat: bool = False) -> np.ndarray:
    """Released inference stretches each output to [0,1] by its own min/max; ``none`` keeps it, and so
    does a ``flat`` pair (no contrast in either source, see ``imaging.is_flat_pair``)."""
    if stretch not in STRETCH_MODES:
        raise ValueError(f"stretch must be one of {STRETCH_MODES}, got {stretch!r}")
    if stretch == "minmax" and not flat:
        return stretch_minmax(y)
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def fuse_pair(fuser: Fuser, pair: LoadedPair, stretch: str = "minmax") -> FusedImage:
    """Fuse one loaded pair and render it (gray always; colour when a source had chroma).

    An all-black, all-white or otherwise flat pair is not min/max-stretched: its output stays near-constant."""
    flat = stretch == "minmax" and is_flat_pair(pair.ir_y, pair.vis_y)
    y = postprocess(fuser.fuse(pair.ir_y, pair.vis_y), stretch, flat)
    return FusedImage(y, to_uint8(y), None if pair.chroma is None else compose_output(y, pair.chroma))
