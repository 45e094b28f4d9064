"""Matching infrared and visible files by stem across two folders, and loading a pair."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tdfusion_edge.errors import PairingError

from .color import luma_and_chroma, merge_chroma
from .io import IMAGE_EXTENSIONS, read_image


@dataclass
class PairScan:
    """Result of matching two folders: matched pairs and the files left without a partner."""

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)
    ir_only: list[Path] = field(default_factory=list)
    vis_only: list[Path] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def list_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Image files of a folder by stem (first by name when two files share a stem)."""
    out: dict[str, Path] = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            out.setdefault(path.stem, path)
    return out


def scan_pairs(ir_dir: str | os.PathLike, vis_dir: str | os.PathLike) -> PairScan:
    """Pair files of two folders by stem; report what has no partner."""
    ir, vis = list_images(ir_dir), list_images(vis_dir)
    scan = PairScan()
    for stem in sorted(ir.keys() & vis.keys()):
        scan.pairs.append((stem, ir[stem], vis[stem]))
    scan.ir_only = [ir[s] for s in sorted(ir.keys() - vis.keys())]
    scan.vis_only = [vis[s] for s in sorted(vis.keys() - ir.keys())]
    return scan


@dataclass
class LoadedPair:
    """Luminance of both sources in [0,1] at the visible size, and the chroma to re-attach."""

    ir_y: np.ndarray
    vis_y: np.ndarray
    chroma: np.ndarray | None
    resized: bool


def load_pair(ir_path: Path, vis_path: Path, resize: bool = False) -> LoadedPair:
    """Read both images; a size mismatch is an error unless ``resize`` (IR → visible size)."""
    ir_img, vis_img = read_image(ir_path), read_image(vis_path)
    resized = False
    if ir_img.shape[:2] != vis_img.shape[:2]:
        if not resize:
            raise PairingError(f"size mismatch: IR {ir_img.shape[1]}x{ir_img.shape[0]} vs visible "
                               f"{vis_img.shape[1]}x{vis_img.shape[0]} (use --resize)")
        h, w = vis_img.shape[:2]
        ir_img = cv2.resize(ir_img, (w, h), interpolation=cv2.INTER_LINEAR)
        resized = True
    ir_y, ir_c = luma_and_chroma(ir_img)
    vis_y, vis_c = luma_and_chroma(vis_img)
    return LoadedPair(ir_y, vis_y, merge_chroma(ir_c, vis_c), resized)
