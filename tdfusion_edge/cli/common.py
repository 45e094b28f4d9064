"""Small helpers shared by subcommands."""
from __future__ import annotations

import argparse
from pathlib import Path

from tdfusion_edge.errors import TDFusionError


def add_command(subparsers, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """Register a subcommand whose --help ends with a usage example."""
    return subparsers.add_parser(name, help=summary, description=summary,
                                 epilog=f"example:\n  {example}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


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
