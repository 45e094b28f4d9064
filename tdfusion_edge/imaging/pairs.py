"""Matching infrared and visible files by stem across two folders, and loading a pair."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tdfusion_edge.errors import PairingError

from tdfusion_edge.validation.image import describe_duplicates, index_images

from .color import luma_and_chroma, merge_chroma
from .io import read_image


@dataclass
class PairScan:
    """Result of matching two folders: matched pairs and the files left without a partner."""

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)
    ir_only: list[Path] = field(default_factory=list)
    vis_only: list[Path] = field(default_factory=list)
    # One line per stem refused because several files of one folder share it (a.png and a.jpg).
    duplicates: list[str] = field(default_factory=list)


def list_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Image files of a folder by stem; stems that several files share are left out (ambiguous)."""
    return index_images(folder).by_stem


def scan_pairs(ir_dir: str | os.PathLike, vis_dir: str | os.PathLike) -> PairScan:
    """Pair files of two folders by stem; report what has no partner and the ambiguous stems."""
    ir_index, vis_index = index_images(ir_dir), index_images(vis_dir)
    ir, vis = ir_index.by_stem, vis_index.by_stem
    refused = ir_index.duplicates.keys() | vis_index.duplicates.keys()
    scan = PairScan()
    for stem in sorted(refused):
        for role, index in (("infrared", ir_index), ("visible", vis_index)):
            if stem in index.duplicates:
                scan.duplicates.append(describe_duplicates(stem, index.duplicates[stem], role))
    ir = {s: p for s, p in ir.items() if s not in refused}
    vis = {s: p for s, p in vis.items() if s not in refused}
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


def load_pair(ir_path: Path, vis_path: Path, resize: bool = False, limit: int | None = None) -> LoadedPair:
    """Read both images (at most ``limit`` pixels each); a size mismatch is an error unless ``resize``."""
    ir_img, vis_img = read_image(ir_path, limit), read_image(vis_path, limit)
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
