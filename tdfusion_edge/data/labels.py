"""Detection label files: Pascal VOC xml and YOLO txt, both to N×5 float32 [class, x1, y1, x2, y2] pixels."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np


class LabelError(ValueError):
    """A label file that cannot be parsed or holds values outside the allowed range."""


def _empty() -> np.ndarray:
    return np.zeros((0, 5), np.float32)


def clip_boxes(boxes: np.ndarray, height: int, width: int, min_size: float = 1.0) -> tuple[np.ndarray, int]:
    """Boxes clipped to the image, those thinner than ``min_size`` pixels dropped; returns (boxes, dropped)."""
    if len(boxes) == 0:
        return boxes.astype(np.float32).reshape(0, 5), 0
    b = boxes.astype(np.float32).copy()
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, width)
    b[:, [2, 4]] = b[:, [2, 4]].clip(0, height)
    keep = ((b[:, 3] - b[:, 1]) >= min_size) & ((b[:, 4] - b[:, 2]) >= min_size)
    return b[keep], int((~keep).sum())


def parse_voc(path: str | Path, names: list[str] | tuple[str, ...]) -> tuple[np.ndarray, int]:
    """Objects of a VOC xml as boxes; objects whose name is not in ``names`` (case-insensitive) are dropped.

    Returns (boxes N×5, number of dropped objects). VOC pixel coordinates are taken as given (no −1 shift:
    M3FD and LLVIP annotations are 0-based in practice and a one-pixel offset is below labelling noise).
    """
    lookup = {n.lower(): i for i, n in enumerate(names)}
    try:
        root = ET.parse(str(path)).getroot()
    except (ET.ParseError, OSError) as exc:
        raise LabelError(f"cannot parse {Path(path).name}: {exc}") from None
    rows, dropped = [], 0
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        box = obj.find("bndbox")
        if box is None:
            raise LabelError(f"object without bndbox in {Path(path).name}")
        try:
            x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise LabelError(f"non-numeric bndbox in {Path(path).name}") from None
        if name not in lookup:
            dropped += 1
            continue
        rows.append((lookup[name], min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    return (np.asarray(rows, np.float32) if rows else _empty()), dropped


def parse_yolo(path: str | Path, height: int, width: int, num_classes: int) -> np.ndarray:
    """Lines ``class xc yc w h`` (normalised to [0, 1]) of a YOLO txt as pixel boxes."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"cannot read {Path(path).name}: {exc}") from None
    rows = []
    for ln, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 5:
            raise LabelError(f"{Path(path).name}:{ln}: expected 'class xc yc w h'")
        try:
            c, xc, yc, w, h = (float(f) for f in fields[:5])
        except ValueError:
            raise LabelError(f"{Path(path).name}:{ln}: non-numeric field") from None
        if c != int(c) or not 0 <= c < num_classes:
            raise LabelError(f"{Path(path).name}:{ln}: class {fields[0]} outside 0..{num_classes - 1}")
        if min(xc, yc, w, h) < 0 or max(xc, yc) > 1 or w > 1 or h > 1:
            raise LabelError(f"{Path(path).name}:{ln}: coordinates not normalised to [0, 1]")
        rows.append((c, (xc - w / 2) * width, (yc - h / 2) * height, (xc + w / 2) * width, (yc + h / 2) * height))
    return np.asarray(rows, np.float32) if rows else _empty()


def check_mask(mask: np.ndarray, num_classes: int, ignore_index: int = 255) -> str | None:
    """Why a mask is unusable (values outside the classes, nothing labelled), or None when it is fine."""
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        return f"values {bad[:5].tolist()} outside 0..{num_classes - 1} and {ignore_index}"
    if values.size == 1 and values[0] == ignore_index:
        return "empty"
    return None
