"""``tdfusion-edge train``: Algorithm 1 from a config file and command-line overrides, resumable."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from tdfusion_edge.errors import TDFusionError

from .common import add_command, resolve_device

log = logging.getLogger("tdfusion_edge.train")

# flag → config key; a flag given on the command line becomes a `key=value` override
_FLAGS = {"data": "data", "task": "task", "epochs": "epochs", "meta_steps": "meta_steps",
          "fusion_steps": "fusion_steps", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
          "workers": "num_workers"}
# flags holding text: quoted as JSON (valid YAML), so a path such as "2024" or "on" stays a string
_TEXT_FLAGS = {"data", "task"}


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "train", "train TDFusion (fusion net F, loss generator G, task net T)",
                    "tdfusion-edge train --data msrs.yaml --task seg --out runs/msrs_seg")
    p.add_argument("--data", help="dataset YAML, or 'synthetic' (procedural scenes, no files; default)")
    p.add_argument("--root", help="dataset root folder (overrides the dataset YAML's path:)")
    p.add_argument("--task", choices=("seg", "det"), help="downstream task (default seg)")
    p.add_argument("--config", help="YAML file of config keys (see docs/training.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set g_update=adam --set fusion_net.dim=8 (repeatable)")
    p.add_argument("--epochs", type=int, help="epochs (released: 40)")
    p.add_argument("--meta-steps", type=int, help="meta steps M per epoch (released: 200)")
    p.add_argument("--fusion-steps", type=int, help="fusion steps per epoch (0: one pass over the data, released)")
    p.add_argument("--batch-size", type=int, help="images per step incl. swapped twins (released: 2)")
    p.add_argument("--lr", type=float, help="Adam learning rate of F and T (released: 1e-4)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--workers", type=int, help="data-loading worker processes")
    p.add_argument("--out", help="output folder (default runs/train-<time>; the checkpoint's folder with --resume)")
    p.add_argument("--resume", help="continue exactly from a training checkpoint (e.g. runs/x/last.pt)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (under torchrun: one GPU per process)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=run)


def _overrides(args) -> list[str]:
    out = [f"{key}={json.dumps(value) if flag in _TEXT_FLAGS else value}"
           for flag, key in _FLAGS.items() if (value := getattr(args, flag)) is not None]
    if args.root is not None:  # absolute, so that a resumed run finds the data from any folder
        out.append(f"data_root={json.dumps(os.path.abspath(Path(args.root).expanduser()))}")
    return out + list(args.overrides)


def _resume_hint(stop, args, distributed: bool) -> str:
    """What to type to continue an interrupted run (the checkpoint holds its whole config)."""
    if stop.checkpoint is None:
        return "training stopped before any checkpoint was written"
    cmd = ["tdfusion-edge", "train", "--resume", str(Path(stop.checkpoint).resolve())]
    if args.device != "auto":
        cmd += ["--device", args.device]
    text = f"training stopped; final checkpoint {stop.checkpoint}. Resume with:\n  {shlex.join(cmd)}"
    if distributed:
        text += "\n  (launched by torchrun: start it the same way, with these arguments)"
    return text


def run(args) -> int:
    from tdfusion_edge.train.config import build_config
    from tdfusion_edge.train.distributed import init_distributed, launched_by_torchrun, shutdown
    from tdfusion_edge.train.interrupt import TrainingInterrupted
    from tdfusion_edge.train.state import load_state
    from tdfusion_edge.train.trainer import Trainer
    from tdfusion_edge.validation.train_config import check_train_values

    base = None
    if args.resume:
        base = load_state(args.resume).get("config")
        # a resumed config is untrusted input: every value is checked before anything is built from it
        check_train_values(base, source=f"{args.resume} (its config)")
    cfg = build_config(args.config, _overrides(args), base=base)
    if cfg.task == "det" and cfg.task_weights:  # a resumed config is untrusted too: check before any write
        from tdfusion_edge.validation.detector import check_detector_spec

        check_detector_spec(cfg.task_weights)
    if args.out:
        out = Path(args.out)
    elif args.resume:
        out = Path(args.resume).resolve().parent
    elif launched_by_torchrun():
        raise TDFusionError("give --out when launching with torchrun (every process must write to the same folder)")
    else:
        out = Path("runs") / f"train-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    if base is not None:
        changed = sorted(k for k, v in cfg.to_dict().items() if base.get(k) != v)
        if changed:
            log.warning("resuming with changed config key(s): %s (the run is then no longer an exact "
                        "continuation)", ", ".join(changed))
    ctx = init_distributed(resolve_device(args.device))
    try:
        trainer = Trainer(cfg, out, ctx=ctx, progress=not args.no_progress)
        history = trainer.fit(resume=args.resume)
    except TrainingInterrupted as stop:
        # the final checkpoint is on disk; a late Ctrl-C must not kill the exit (Python resets its own
        # handlers to the default while it shuts down, but leaves ignored signals ignored)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if ctx.is_main:
            print(_resume_hint(stop, args, ctx.enabled), file=sys.stderr)
        return stop.exit_code
    finally:
        shutdown(ctx)
    if ctx.is_main:
        last = history[-1] if history else {}
        print(f"trained {cfg.epochs} epoch(s); outputs in {out} (last.pt, fusion_net.pt, loss_generator.pt, "
              f"weight_maps/, tensorboard/, train.log)")
        if "w_ir_mean" in last:
            print(f"mean IR weight of G on the fixed samples: {last['w_ir_mean']:.3f}")
    return 0
