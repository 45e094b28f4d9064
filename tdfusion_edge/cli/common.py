"""Small helpers shared by subcommands."""
from __future__ import annotations

import argparse
from pathlib import Path

from tdfusion_edge.errors import TDFusionError


def add_command(subparsers, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """Register a subcommand whose --help ends with a usage example (and that takes -v itself too)."""
    parser = subparsers.add_parser(name, help=summary, description=summary,
                                   epilog=f"example:\n  {example}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    # SUPPRESS: absent here, the top-level -v (tdfusion-edge -v live ...) still counts.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging and full tracebacks")
    return parser


def existing_dir(path: str, what: str) -> Path:
    """``path`` as a Path, or a one-line error if it is not a directory."""
    p = Path(path)
    if not p.is_dir():
        raise TDFusionError(f"{what} folder not found: {p}")
    return p


def resolve_device(name: str):
    """'auto', 'cpu' or 'cuda[:N]' → a usable torch device, or a one-line error."""
    import torch  # imported here so light commands (eval, calibrate) start fast

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TDFusionError("--device cuda asked for, but no CUDA device is available here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise TDFusionError(f"unknown device {name!r}") from None


def add_run_dir_options(parser: argparse.ArgumentParser, verb: str, out_help: str | None = None) -> None:
    """--out / --exist-ok, named the way ultralytics names runs: runs/<verb>/exp, exp2, exp3, ..."""
    parser.add_argument("--out", default=None, nargs="?", const="", metavar="DIR",
                        help=out_help or f"output folder (default: runs/{verb}/exp, then exp2, exp3, ...; "
                                         "an existing folder gets the next free number)")
    parser.add_argument("--exist-ok", action="store_true",
                        help="write into --out even if it exists (files of the same name are replaced)")


def run_dir(out: str | None, verb: str, exist_ok: bool = False) -> Path:
    """The folder a run writes to: ``out`` (or runs/<verb>/exp when empty), or, when that exists and is
    not empty and ``exist_ok`` is false, the first free ``<out>2``, ``<out>3``, ... — never another run's."""
    base = Path(out) if out else Path("runs") / verb / "exp"
    if base.exists() and not base.is_dir():
        raise TDFusionError(f"output folder {base} is a file")
    if exist_ok or not base.exists() or not any(base.iterdir()):
        return base
    n = 2
    while (candidate := base.with_name(f"{base.name}{n}")).exists() and (
            not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
    return candidate
