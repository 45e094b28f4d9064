"""The ``tdfusion-edge`` command line: one module per subcommand, each with ``add_parser``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tdfusion_edge import __version__
from tdfusion_edge.errors import TDFusionError

# (subcommand module, one-line summary); each module defines add_parser(subparsers) and run(args).
COMMANDS = (
    "demo",
    "fuse",
    "eval_cmd",
    "train_cmd",
    "export_cmd",
    "live",
    "calibrate",
    "info",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="tdfusion-edge",
        description="Task-driven infrared-visible image fusion: fuse, evaluate, train, export, run live.",
    )
    parser.add_argument("--version", action="version", version=f"tdfusion-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tdfusion_edge.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TDFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
