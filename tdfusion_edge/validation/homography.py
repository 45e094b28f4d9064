"""Homography files (YAML, JSON, OpenCV FileStorage YAML) read as untrusted input.

The file's size is checked before it is read, it must be UTF-8 text, YAML is parsed with
``yaml.SafeLoader`` and refused when it uses anchors or aliases (a homography never needs them, and
they are how a 500-byte file expands into gigabytes), nesting is bounded, and the matrix must be
3×3, finite and invertible before anything uses it. OpenCV's ``%YAML`` files are parsed the same
way (their ``!!opencv-matrix`` tag is a plain mapping), not handed to OpenCV's C parser.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from tdfusion_edge.errors import TDFusionError

# A homography file written by ``calibrate`` is under 1 kB; 64 KiB leaves room for comments.
MAX_BYTES = 64 * 1024
MAX_DEPTH = 8            # {"homography": [[...]]} is 3 levels deep
MAX_IMAGE_SIDE = 65535
MIN_ABS_DET = 1e-12      # of the matrix normalised so that h33 = 1


class HomographyFileError(TDFusionError):
    """A homography file that is too large, not text, malformed, or holds an unusable matrix."""


@dataclass
class HomographyData:
    """What a homography file holds, checked: a 3×3 float64 matrix with h33 = 1 and optional sizes."""

    matrix: np.ndarray
    ir_size: tuple[int, int] | None = None
    vis_size: tuple[int, int] | None = None
    info: dict = field(default_factory=dict)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``!!opencv-matrix`` as a mapping and refuses anchors and aliases."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise HomographyFileError("uses a YAML alias (*name); homography files may not use anchors or aliases")
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise HomographyFileError(f"uses a YAML anchor (&{event.anchor}); homography files may not use anchors "
                                      "or aliases")
        return super().compose_node(parent, index)


_Loader.add_constructor("tag:yaml.org,2002:opencv-matrix", yaml.SafeLoader.construct_mapping)


def read_text_limited(path: str | os.PathLike, what: str, max_bytes: int,
                      error: type[TDFusionError] = HomographyFileError) -> str:
    """A small UTF-8 text file's content; one-line ``error`` for missing, oversized or binary files."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{what} {path} is {size} bytes; expected a small text file (at most {max_bytes})")
    with open(path, "rb") as fh:
        raw = fh.read(max_bytes + 1)  # the file may grow between stat and read
    if len(raw) > max_bytes:
        raise error(f"{what} {path} is larger than {max_bytes} bytes")
    if b"\x00" in raw:
        raise error(f"{what} {path} is not a text file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text") from None


def _depth(value, limit: int, level: int = 0) -> int:
    if level > limit:
        return level
    if isinstance(value, dict):
        return max([_depth(v, limit, level + 1) for v in value.values()] + [level + 1])
    if isinstance(value, list):
        return max([_depth(v, limit, level + 1) for v in value] + [level + 1])
    return level


def _parse_problem(exc: Exception) -> str:
    """One line saying what is wrong and where (YAML errors span several lines)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _parse(text: str, path: Path):
    is_json = path.suffix.lower() == ".json"
    lines = text.splitlines()
    if not is_json and lines and lines[0].startswith("%YAML"):
        # OpenCV writes "%YAML:1.0" (not YAML syntax) or "%YAML 1.2" (a version PyYAML refuses);
        # blanked rather than removed so that error line numbers stay right.
        text = "\n".join([""] + lines[1:])
    try:
        data = json.loads(text) if is_json else yaml.load(text, Loader=_Loader)  # noqa: S506 (SafeLoader subclass)
    except HomographyFileError as exc:
        raise HomographyFileError(f"{path}: {exc}") from None
    except (json.JSONDecodeError, yaml.YAMLError, ValueError) as exc:
        raise HomographyFileError(f"cannot parse homography file {path}: {_parse_problem(exc)}") from None
    except RecursionError:
        raise HomographyFileError(f"cannot parse homography file {path}: nested too deeply") from None
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise HomographyFileError(f"{path}: nested more than {MAX_DEPTH} levels deep; not a homography file")
    return data


def _entry(value, path: Path) -> float:
    """One matrix entry: a number, or a string OpenCV/YAML 1.1 leaves unresolved (e.g. '1e-5')."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise HomographyFileError(f"{path}: 'homography' entries must be numbers, got {value!r:.40}")
    try:
        number = float(value)
    except ValueError:
        raise HomographyFileError(f"{path}: 'homography' entry {value!r:.40} is not a number") from None
    if not math.isfinite(number):
        raise HomographyFileError(f"{path}: homography contains NaN or infinite values")
    return number


def _matrix(value, path: Path) -> np.ndarray:
    if isinstance(value, dict) and "data" in value:  # !!opencv-matrix {rows, cols, dt, data}
        rows, cols = value.get("rows"), value.get("cols")
        if (rows, cols) != (3, 3):
            raise HomographyFileError(f"{path}: a homography is 3×3; the OpenCV matrix is {rows}×{cols}")
        value = value["data"]
    if not isinstance(value, list):
        raise HomographyFileError(f"{path}: 'homography' should be a 3×3 list of numbers")
    if len(value) == 9 and not any(isinstance(v, list) for v in value):
        flat = value
    elif len(value) == 3 and all(isinstance(r, list) and len(r) == 3 for r in value):
        flat = [v for row in value for v in row]
    else:
        shape = [len(value)] + ([len(value[0])] if value and isinstance(value[0], list) else [])
        raise HomographyFileError(f"{path}: a homography is 3×3; got shape {tuple(shape)}")
    m = np.array([_entry(v, path) for v in flat], np.float64).reshape(3, 3)
    if abs(m[2, 2]) < 1e-12:
        raise HomographyFileError(f"{path}: homography is degenerate: h33 is 0 (it sends the origin to infinity)")
    m = m / m[2, 2]
    det = float(np.linalg.det(m))
    if not math.isfinite(det) or abs(det) < MIN_ABS_DET:
        raise HomographyFileError(f"{path}: homography is degenerate: singular matrix (determinant {det:.3g})")
    return m


def _size(value, key: str, path: Path) -> tuple[int, int] | None:
    if value is None:
        return None
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE for v in value))
    if not ok:
        raise HomographyFileError(f"{path}: {key} should be [width, height] in pixels, got {value!r:.60}")
    return int(value[0]), int(value[1])


def load_homography_file(path: str | os.PathLike) -> HomographyData:
    """Read and check a homography file (see the module docstring); one-line errors naming the file."""
    path = Path(path)
    data = _parse(read_text_limited(path, "homography file", MAX_BYTES), path)
    if isinstance(data, list):
        data = {"homography": data}
    if not isinstance(data, dict):
        raise HomographyFileError(f"{path} should hold a mapping with a 'homography' entry")
    key = next((k for k in ("homography", "H", "h") if k in data), None)
    if key is None:
        raise HomographyFileError(f"{path} has no 'homography' entry")
    info = {str(k): v for k, v in data.items() if k not in ("homography", "H", "h", "ir_size", "vis_size")
            and isinstance(v, (str, int, float, bool))}
    return HomographyData(_matrix(data[key], path), _size(data.get("ir_size"), "ir_size", path),
                          _size(data.get("vis_size"), "vis_size", path), info)
