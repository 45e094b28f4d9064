"""Numeric command-line values: typed ``argparse`` ``type=`` functions and ``k=v`` option checks.

Every number a user types is checked here before anything is built from it: finite (no ``nan`` or
``inf``), inside stated bounds, and of the right kind. ``argparse`` types raise
``ArgumentTypeError`` (argparse prints ``error: argument --x: ...`` and exits 2); checks of
``k=v`` option strings raise ``NumberError``, a ``TDFusionError`` (one line, exit 2).
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

from tdfusion_edge.errors import TDFusionError

MAX_PORT = 65535


class NumberError(TDFusionError):
    """A numeric value that is not a number, not finite, or out of its bounds."""


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def _bounds_text(minimum: float | None, maximum: float | None, min_inclusive: bool) -> str:
    lo, hi = (None if v is None else _fmt(v) for v in (minimum, maximum))
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}" if min_inclusive else f"> {lo} and ≤ {hi}"
    if lo is not None:
        return f"≥ {lo}" if min_inclusive else f"> {lo}"
    return f"≤ {hi}"


def parse_number(text: str | float | int, what: str, *, integer: bool = False, minimum: float | None = None,
                 maximum: float | None = None, min_inclusive: bool = True) -> int | float:
    """``text`` as a finite int/float inside the bounds, or a one-line ``NumberError`` naming ``what``."""
    raw = str(text).strip()
    try:
        value = int(raw, 10) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise NumberError(f"{what} must be {kind}, got {raw!r}") from None
    if not integer and not math.isfinite(value):
        raise NumberError(f"{what} must be a finite number, got {raw!r}")
    low_bad = minimum is not None and (value < minimum if min_inclusive else value <= minimum)
    if low_bad or (maximum is not None and value > maximum):
        raise NumberError(f"{what} must be {_bounds_text(minimum, maximum, min_inclusive)}, got {raw}")
    return value


def _argparse_type(name: str, **bounds) -> Callable[[str], int | float]:
    """An argparse ``type=`` that checks like ``parse_number`` and reports through argparse."""
    def convert(text: str) -> int | float:
        try:
            return parse_number(text, "value", **bounds)
        except NumberError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value ")) from None
    convert.__name__ = name
    return convert


def int_in(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """argparse type: a whole number in [minimum, maximum] (either bound may be open)."""
    return _argparse_type("int", integer=True, minimum=minimum, maximum=maximum)


def float_in(minimum: float | None = None, maximum: float | None = None,
             min_inclusive: bool = True) -> Callable[[str], float]:
    """argparse type: a finite number in [minimum, maximum] (``min_inclusive=False``: > minimum)."""
    return _argparse_type("float", minimum=minimum, maximum=maximum, min_inclusive=min_inclusive)


port = _argparse_type("port", integer=True, minimum=1, maximum=MAX_PORT)
positive_int = int_in(1)
non_negative_int = int_in(0)
positive_float = float_in(0.0, min_inclusive=False)
non_negative_float = float_in(0.0)
finite_float = float_in()


def parse_hw(text: str, what: str = "size", *, min_side: int = 16, max_side: int = 4096) -> tuple[int, int]:
    """``"240x320"`` → (240, 320) (height × width), each side in [min_side, max_side]."""
    parts = str(text).lower().replace("×", "x").split("x")
    if len(parts) != 2:
        raise NumberError(f"{what} {text!r} should look like HEIGHTxWIDTH, e.g. 240x320")
    h, w = (parse_number(p, f"{what} {text!r}: each side", integer=True, minimum=min_side, maximum=max_side)
            for p in parts)
    return h, w


def hw_size(min_side: int = 16, max_side: int = 4096) -> Callable[[str], tuple[int, int]]:
    """argparse type: an ``HxW`` size with both sides in [min_side, max_side]."""
    def convert(text: str) -> tuple[int, int]:
        try:
            return parse_hw(text, "size", min_side=min_side, max_side=max_side)
        except NumberError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = "HxW size"
    return convert


def option_number(options: dict[str, str], key: str, default: int | float | None, *, integer: bool = False,
                  minimum: float | None = None, maximum: float | None = None, min_inclusive: bool = True,
                  where: str = "option") -> int | float | None:
    """The ``k=v`` option ``key`` checked like ``parse_number``, or ``default`` when it is absent."""
    if key not in options:
        return default
    return parse_number(options[key], f"{where} {key}={options[key]}", integer=integer, minimum=minimum,
                        maximum=maximum, min_inclusive=min_inclusive)
