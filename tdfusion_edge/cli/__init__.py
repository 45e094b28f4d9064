"""The ``tdfusion-edge`` command line: one module per subcommand, each with ``add_parser``."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from tdfusion_edge import __version__
from tdfusion_edge.errors import TDFusionError

# (subcommand module, one-line summary); each module defines add_parser(subparsers) and run(args).
COMMANDS = (
    "demo",
    "fuse",
    "eval_cmd",
    "val_cmd",
    "train_cmd",
    "distill",
    "export_cmd",
    "convert_det",
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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tdfusion_edge.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code.

    User errors (``TDFusionError``) print one line and exit 2. Anything else that escapes a command
    is a bug or an unforeseen fault: one line naming it and exit 1, the traceback only with -v.
    """
    raw = sys.argv[1:] if argv is None else [str(a) for a in argv]
    verbose = "-v" in raw or "--verbose" in raw  # until parsed: a command that fails to import shows its traceback
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        verbose = bool(getattr(args, "verbose", False))
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except TDFusionError as exc:
        if verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`tdfusion-edge info | head -1`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # the net under every command, not a substitute for its checks
        if verbose:
            traceback.print_exc()
        message = " ".join(str(exc).split()) or "(no message)"
        print(f"error: {type(exc).__name__}: {message[:500]} (run with -v for the traceback)", file=sys.stderr)
        return 1
