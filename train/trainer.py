"""The training loop of Algorithm 1: epochs of M meta steps then a fusion phase, with evaluation,
weight-map images, TensorBoard scalars, atomic checkpoints, exact resume, a NaN/Inf guard and DDP.
"""
from __future__ import annotations

import logging
import math
import random
import re
import signal
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from tdfusion_edge.checkpoints import load_model, resolve_weights, save_checkpoint
from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.models import FusionNet, FusionNetConfig, LossGenerator
from tdfusion_edge.tasks import build_task, to_task_input

from .ablations import FIXED_W, Ablations, WeightedAverageFusion
from .config import TrainConfig, save_config
from .data_stream import BatchStream, dataset_spec, eval_dataset, eval_loader, eval_split, train_loader
from .distributed import DistContext, GradReducer, broadcast_module_, unwrap, wrap_ddp
from .evaluation import evaluate, fixed_samples, masked_mean, weights_and_fused
from .fusion_phase import fusion_step
from .interrupt import StopRequest, TrainingInterrupted
from .meta_step import LossSettings, MetaHyper, MetaNets, meta_step
from .meters import Meters
from .state import capture_rng, load_state, remove_stale_temporaries, restore_rng, save_state
from .weight_maps import save_weight_maps

log = logging.getLogger("tdfusion_edge.train")


class TrainingDiverged(TDFusionError):
    """A loss or gradient became NaN/Inf; training stopped before writing anything from that step."""


@dataclass
class Position:
    """Where the run is: the next step to take is ``step`` of ``phase`` in ``epoch`` (0-based)."""

    epoch: int = 0
    phase: str = "meta"
    step: int = 0
    global_step: int = 0


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's ``random`` (all processes alike, so they build identical nets)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# the eval metric that picks best.pt, per task (higher is better)
BEST_METRIC = {"seg": "mIoU", "det": "mAP50-95"}


class Trainer:
    """Build everything from a TrainConfig, then ``fit()``; rank 0 writes all files under ``out_dir``."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, device: torch.device | str = "cpu",
                 ctx: DistContext | None = None, progress: bool = True):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.ctx = ctx or DistContext(device=torch.device(device))
        self.device = self.ctx.device
        self.reducer = GradReducer(self.ctx)
        self.progress = progress and self.ctx.is_main
        self.ablations = Ablations.from_names(cfg.ablations)
        self.loss_settings = LossSettings(alpha=0.0 if self.ablations.no_grad_loss else cfg.alpha,
                                          intensity_form=cfg.intensity_form,
                                          fixed_w=FIXED_W if self.ablations.fixed_w else None,
                                          remove_brightness_mode=cfg.remove_brightness_mode)
        self.position = Position()
        self.meters = Meters()
        self.history: list[dict[str, float]] = []
        self.last_checkpoint: Path | None = None
        self._saved_at: int | None = None  # global step of the last last.pt written
        self.best: dict[str, float] | None = None  # {"metric": name, "value": v, "epoch": n} of best.pt
        self.stop = StopRequest()
        self._writer = None
        self._log_handler: logging.Handler | None = None

        seed_everything(cfg.seed)
        self.spec = dataset_spec(cfg)
        self.loader = train_loader(cfg, self.spec, self.ctx.world_size)
        self.stream = BatchStream(self.loader, cfg.swap, self.device)
        self.fusion_steps = cfg.fusion_steps or len(self.loader)
        self._build_networks()
        self._build_optimizers()
        self.eval_split = eval_split(self.spec)
        self._eval_loader = None  # built on first use (a real split is scanned once, not every epoch)
        self.samples = None
        if self.ctx.is_main:
            split = self.eval_split or "train"
            self.samples = fixed_samples(eval_dataset(cfg, self.spec, split), cfg.weight_map_samples, self.device)

    # ----------------------------------------------------------------------------------- building
    def _build_networks(self) -> None:
        cfg, dev = self.cfg, self.device
        self.loss_gen = LossGenerator(cfg.loss_generator_config()).to(dev) if self.ablations.uses_generator else None
        if self.ablations.weighted_average:
            fusion: nn.Module = WeightedAverageFusion(self.loss_gen)
        else:
            fusion = FusionNet(cfg.fusion_net_config())
            init = cfg.init_fusion
            if init == "auto":
                init = "default" if fusion.config == FusionNetConfig() else None
                log.info("F starts from %s", "the built-in weights (init_fusion auto)" if init else
                         "scratch (init_fusion auto: fusion_net differs from the built-in weights' size)")
            if init:
                loaded, info = load_model(resolve_weights(init), "FusionNet")
                if loaded.config != fusion.config:
                    raise TDFusionError(f"init_fusion {init} has size {info['config']}, "
                                        f"but fusion_net is {cfg.fusion_net} (--set init_fusion=null trains "
                                        f"F from scratch)")
                fusion.load_state_dict(loaded.state_dict())
        seg_options = {"class_weights": cfg.class_weights} if cfg.task == "seg" else {}
        self.task_net = build_task(cfg.task, cfg.num_classes or self.spec.num_classes, cfg.task_weights,
                                   names=self.spec.names, **seg_options).to(dev)
        self.fusion = wrap_ddp(fusion.to(dev).train(), self.ctx)
        self.task = wrap_ddp(self.task_net.train(), self.ctx)
        if self.loss_gen is not None and not self.ablations.weighted_average:
            broadcast_module_(self.loss_gen, self.ctx)  # G is stepped by hand, not through DDP

    def _build_optimizers(self) -> None:
        cfg = self.cfg
        self.f_opt = torch.optim.Adam(self.fusion.parameters(), lr=cfg.lr, weight_decay=0)
        self.t_opt = torch.optim.Adam(self.task.parameters(), lr=cfg.lr, weight_decay=0)
        self.f_sched = torch.optim.lr_scheduler.StepLR(self.f_opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        self.t_sched = torch.optim.lr_scheduler.StepLR(self.t_opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        self.g_opt = self.g_sched = None
        if self.ablations.meta_phase and cfg.g_update == "adam":
            # eps 1e-10 as the released code's (unused) optimizer of G
            self.g_opt = torch.optim.Adam(self.loss_gen.parameters(), lr=cfg.g_lr, eps=1e-10)
            self.g_sched = torch.optim.lr_scheduler.StepLR(self.g_opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)

    # ----------------------------------------------------------------------------------- helpers
    @property
    def f_lr(self) -> float:
        """F's current learning rate (η_F' of the inner update, as released)."""
        return self.f_opt.param_groups[0]["lr"]

    def g_lr(self) -> float:
        """G's step size now: the max-normalised rule follows F's schedule, as released."""
        if self.g_opt is not None:
            return self.g_opt.param_groups[0]["lr"]
        return self.cfg.g_lr * self.f_lr / self.cfg.lr

    def check_finite(self, name: str, value: torch.Tensor) -> None:
        """Stop every process when ``value`` is NaN/Inf on any of them, naming the last good checkpoint."""
        bad = not bool(torch.isfinite(value.detach()).all())
        if self.reducer.any_true(bad):
            p = self.position
            where = (f"epoch {p.epoch + 1}, {p.phase} step {p.step + 1} (global step {p.global_step + 1})")
            kept = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                    else "no checkpoint was written yet")
            raise TrainingDiverged(f"{name} is not finite at {where}; training stopped and {kept}. "
                                   f"Try a lower lr or g_lr, then --resume from it.")

    def _fuse(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        return unwrap(self.fusion)(ir, vis)

    def _tqdm(self, total: int, initial: int, desc: str):
        return tqdm(total=total, initial=initial, desc=desc, disable=not self.progress, leave=False,
                    dynamic_ncols=True)

    # ----------------------------------------------------------------------------------- logging
    def _open_outputs(self, resumed: bool) -> None:
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temporaries(self.out)
        save_config(self.cfg, self.out / "config.yaml")
        self._log_handler = logging.FileHandler(self.out / "train.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(self._log_handler)
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
        if removed:
            log.info("removed %d stale temporary file(s) left by an interrupted write: %s", len(removed),
                     ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run logged after its last checkpoint
            self._writer = SummaryWriter(str(self.out / "tensorboard"),
                                         purge_step=self.position.global_step if resumed else None)
        except ImportError:  # tensorboard is a dependency, but a missing one should not stop training
            log.warning("tensorboard is not installed: no TensorBoard scalars will be written")

    def _close_outputs(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def _scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self._writer is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self._writer.add_scalar(f"{prefix}/{k}", v, step)

    def _log_window(self, phase: str) -> None:
        window = self.meters.take_window()
        # every process calls mean_scalar in the same order (same keys), so DDP stays in step
        window = {k: self.reducer.mean_scalar(v) for k, v in window.items()}
        self._scalars(phase, window, self.position.global_step)
        if self.ctx.is_main:
            p = self.position
            total = self.cfg.meta_steps if phase == "meta" else self.fusion_steps
            losses = ", ".join(f"{k} {v:.4g}" for k, v in window.items() if "loss" in k and math.isfinite(v))
            # with progress bars on, the bar already shows this
            (log.debug if self.progress else log.info)("epoch %d/%d %s step %d/%d (global step %d) | %s",
                                                       p.epoch + 1, self.cfg.epochs, phase, p.step, total,
                                                       p.global_step, losses)
        self._scalars("lr", {"F": self.f_lr, "G": self.g_lr()}, self.position.global_step)

    # ----------------------------------------------------------------------------------- checkpoints
    def _payload(self) -> dict[str, Any]:
        rng = capture_rng()
        if self.ctx.enabled:
            all_rng: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(all_rng, rng)
        else:
            all_rng = [rng]
        return {
            "config": self.cfg.to_dict(),
            "position": asdict(self.position),
            "stream": self.stream.state_dict(),
            "models": {"fusion": unwrap(self.fusion).state_dict(), "task": unwrap(self.task).state_dict(),
                       "loss_gen": self.loss_gen.state_dict() if self.loss_gen is not None else None},
            "optimizers": {"fusion": self.f_opt.state_dict(), "task": self.t_opt.state_dict(),
                           "loss_gen": self.g_opt.state_dict() if self.g_opt is not None else None},
            "schedulers": {"fusion": self.f_sched.state_dict(), "task": self.t_sched.state_dict(),
                           "loss_gen": self.g_sched.state_dict() if self.g_sched is not None else None},
            "rng": all_rng,
            "world_size": self.ctx.world_size,
            "meters": self.meters.state_dict(),
            "history": self.history,
            "best": self.best,
        }

    def save(self, name: str = "last.pt") -> Path | None:
        """Write the full training state (collective under DDP; rank 0 writes). Returns the path on rank 0."""
        payload = self._payload()
        with self.stop.writing():
            path = save_state(payload, self.out / name) if self.ctx.is_main else None
        self.reducer.barrier()
        if name == "last.pt":
            self.last_checkpoint = self.out / name
            self._saved_at = self.position.global_step
        return path

    def stop_if_requested(self) -> None:
        """After a step: on a stop signal (on any process), write last.pt unless just written, then stop."""
        if not self.reducer.any_true(self.stop.requested):
            return
        if self._saved_at != self.position.global_step:
            self.save("last.pt")
        self.stop.settle()
        signum = self.stop.signum or 15  # under DDP another process may have been the one signalled
        p = self.position
        log.warning("stopped by %s at epoch %d, %s step %d (global step %d); final checkpoint %s",
                    signal.Signals(signum).name, p.epoch + 1, p.phase, p.step, p.global_step, self.last_checkpoint)
        raise TrainingInterrupted(signum, self.last_checkpoint)

    def _export_models(self, prefix: str = "") -> None:
        if not self.ctx.is_main:
            return
        prov = {"epoch": self.position.epoch, "task": self.cfg.task, "data": self.cfg.data,
                "ablations": ",".join(self.ablations.names()) or "none"}
        if self.best is not None and prefix:
            prov[f"best_{self.best['metric']}"] = self.best["value"]
        if not self.ablations.weighted_average:
            save_checkpoint(unwrap(self.fusion), self.out / f"{prefix}fusion_net.pt", prov)
        if self.loss_gen is not None:
            save_checkpoint(self.loss_gen, self.out / f"{prefix}loss_generator.pt", prov)

    def load(self, path: str | Path) -> None:
        """Restore a training state written by ``save`` (models, optimizers, schedulers, position, RNG)."""
        state = load_state(path)
        unwrap(self.fusion).load_state_dict(state["models"]["fusion"])
        unwrap(self.task).load_state_dict(state["models"]["task"])
        if self.loss_gen is not None:
            if state["models"]["loss_gen"] is None:
                raise TDFusionError(f"{path} has no loss generator, but this run's ablations need one")
            self.loss_gen.load_state_dict(state["models"]["loss_gen"])
        self.f_opt.load_state_dict(state["optimizers"]["fusion"])
        self.t_opt.load_state_dict(state["optimizers"]["task"])
        self.f_sched.load_state_dict(state["schedulers"]["fusion"])
        self.t_sched.load_state_dict(state["schedulers"]["task"])
        if self.g_opt is not None:
            if state["optimizers"]["loss_gen"] is None:
                raise TDFusionError(f"{path} was trained without G's Adam (g_update maxnorm); "
                                    f"resume with --set g_update=maxnorm")
            self.g_opt.load_state_dict(state["optimizers"]["loss_gen"])
            self.g_sched.load_state_dict(state["schedulers"]["loss_gen"])
        self.position = Position(**state["position"])
        self.meters.load_state_dict(state.get("meters", {}))
        self.history = list(state.get("history", []))
        self.best = state.get("best")
        self.stream.load_state_dict(state["stream"])
        rngs = state["rng"]
        if int(state.get("world_size", 1)) != self.ctx.world_size:
            log.warning("resuming a %s-process run on %s processes: batches and RNG streams will differ",
                        state.get("world_size"), self.ctx.world_size)
        restore_rng(rngs[self.ctx.rank] if self.ctx.rank < len(rngs) else rngs[0])
        self.last_checkpoint = Path(path)

    # ----------------------------------------------------------------------------------- phases
    def meta_nets(self) -> MetaNets:
        """F, G and T unwrapped from DDP, with T's input adapter: what a meta step works on."""
        return MetaNets(unwrap(self.fusion), self.loss_gen, unwrap(self.task), to_task_input)

    def _after_step(self, phase: str) -> None:
        self.position.step += 1
        self.position.global_step += 1
        if self.position.global_step % self.cfg.log_every == 0:
            self._log_window(phase)
        if self.position.global_step % self.cfg.checkpoint_every == 0:
            self.save("last.pt")
        self.stop_if_requested()

    def _fusion_step(self, batch: dict) -> dict[str, float]:
        res = fusion_step(self.fusion, self.task, self.loss_gen, to_task_input, batch, self.f_opt, self.t_opt,
                          self.loss_settings, self.ablations, self.check_finite)
        return {"fusion_loss_f": res.loss_f, "fusion_loss_t": res.loss_t, "fusion_loss_t_via_f": res.loss_t_through_f}

    def warm_up(self, steps: int) -> None:
        """``steps`` fusion steps (F on L_f, T on L_t) on the next batches, outside the epoch schedule."""
        self.stream.start_pass()
        with self._tqdm(steps, 0, "warm-up: learning F, T") as bar:
            for _ in range(steps):
                values = self._fusion_step(self.stream.next())
                bar.set_postfix(L_f=f"{values['fusion_loss_f']:.4f}", L_t=f"{values['fusion_loss_t']:.4f}",
                                refresh=False)
                bar.update(1)

    def run_meta_phase(self) -> None:
        """M meta steps (inner + outer update of G); with ablation IV, F and T also step on each inner batch."""
        cfg, pos = self.cfg, self.position
        if pos.step == 0:
            self.stream.start_pass()
        hyper_base = dict(inner_task_step=cfg.inner_task_step, loss=self.loss_settings)
        if self.loss_gen is not None:
            self.loss_gen.train()
        with self._tqdm(cfg.meta_steps, pos.step, f"epoch {pos.epoch + 1}/{cfg.epochs} learning G") as bar:
            while pos.step < cfg.meta_steps:
                t0 = time.perf_counter()
                inner, outer = self.stream.next(), self.stream.next()
                hyper = MetaHyper(inner_lr=cfg.inner_lr or self.f_lr, task_lr=self.t_opt.param_groups[0]["lr"],
                                  **hyper_base)
                res = meta_step(self.meta_nets(), inner, outer, hyper, cfg.g_update, self.g_lr(), self.t_opt,
                                self.g_opt, self.reducer, self.check_finite)
                values = {"meta_loss_f": res.loss_f, "meta_loss_t_inner": res.loss_t_inner,
                          "meta_loss_t_outer": res.loss_t_outer, "meta_g_grad_max": res.g_grad_max}
                if not self.ablations.fusion_phase:
                    values.update(self._fusion_step(inner))
                values["sec_meta_step"] = time.perf_counter() - t0
                self.meters.add(values)
                bar.set_postfix(L_f=f"{res.loss_f:.4f}", L_t=f"{res.loss_t_outer:.4f}", refresh=False)
                bar.update(1)
                self._after_step("meta")

    def run_fusion_phase(self) -> None:
        """N fusion steps: F on L_f with G frozen, then T on L_t of F's detached output (eqs. 8–9)."""
        pos = self.position
        if pos.step == 0:
            self.stream.start_pass()
        if self.loss_gen is not None and not self.ablations.weighted_average:
            self.loss_gen.eval()
        with self._tqdm(self.fusion_steps, pos.step, f"epoch {pos.epoch + 1}/{self.cfg.epochs} learning F, T") as bar:
            while pos.step < self.fusion_steps:
                t0 = time.perf_counter()
                values = self._fusion_step(self.stream.next())
                values["sec_fusion_step"] = time.perf_counter() - t0
                self.meters.add(values)
                bar.set_postfix(L_f=f"{values['fusion_loss_f']:.4f}", L_t=f"{values['fusion_loss_t']:.4f}",
                                refresh=False)
                bar.update(1)
                self._after_step("fusion")

    # ----------------------------------------------------------------------------------- epoch end
    def _weight_maps(self, epoch_label: int) -> dict[str, float]:
        """Draw G's weights on the fixed samples (rank 0) and return their mean."""
        if self.samples is None or self.loss_gen is None:
            return {}
        nets = [m for m in (unwrap(self.fusion), self.loss_gen) if m is not None]
        modes = [m.training for m in nets]
        for m in nets:
            m.eval()
        w, fused = weights_and_fused(self._fuse, self.loss_gen, self.samples)
        for m, mode in zip(nets, modes):
            m.train(mode)
        save_weight_maps(self.out / "weight_maps" / f"epoch_{epoch_label:03d}.png", self.samples.ir,
                         self.samples.vis, w, fused, title=f"G's weights after epoch {epoch_label}"
                         if epoch_label else "G's weights before training", outlines=self.samples.ir_only)
        out = {"w_ir_mean": float(w.mean())}
        in_ir_only = masked_mean(w, self.samples.ir_only)
        if math.isfinite(in_ir_only):
            out["w_ir_in_ir_only"] = in_ir_only
        return out

    def _evaluate(self) -> dict[str, float]:
        split = self.eval_split
        if split is None:
            return {}
        nets = [m for m in (unwrap(self.fusion), unwrap(self.task)) if m is not None]
        modes = [m.training for m in nets]
        for m in nets:
            m.eval()
        try:
            if self._eval_loader is None:
                self._eval_loader = eval_loader(self.cfg, self.spec, split)
            loader = self._eval_loader
            bar = (lambda it: tqdm(it, desc=f"evaluating on {split}", leave=False, disable=not self.progress))
            return evaluate(self._fuse, unwrap(self.task), to_task_input, loader, self.device,
                            self.cfg.eval_samples, self.cfg.metric_samples, progress=bar)
        finally:
            for m, mode in zip(nets, modes):
                m.train(mode)

    def end_epoch(self) -> dict[str, float]:
        """LR schedules step; evaluation, weight maps, the summary line; checkpoints and model files."""
        epoch = self.position.epoch
        with warnings.catch_warnings():
            # a run resumed at the end of a phase steps its (restored) schedules before this process has
            # stepped an optimizer; torch's warning about skipping the first lr value does not apply then
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            self.f_sched.step()
            self.t_sched.step()
            if self.g_sched is not None:
                self.g_sched.step()
        train_means = {k: self.reducer.mean_scalar(v) for k, v in self.meters.epoch_means().items()}
        summary = {**train_means}
        if self.ctx.is_main:
            if (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs:
                summary.update({f"eval_{k}": v for k, v in self._evaluate().items()})
            summary.update(self._weight_maps(epoch + 1))
            self._scalars("epoch", summary, epoch + 1)
            log.info("%s", self._summary_line(epoch, summary))
        summary["epoch"] = float(epoch + 1)
        self.history.append(summary)
        self.meters.reset_epoch()
        self.position = Position(epoch=epoch + 1, phase="meta", step=0, global_step=self.position.global_step)
        # decided before last.pt, which then records it; rank 0 evaluates, and saving is collective
        improved = self.reducer.any_true(self._note_if_best(summary, epoch + 1))
        self.save("last.pt")
        if self.cfg.keep_epoch_checkpoints:
            self.save(f"epoch_{epoch + 1:03d}.pt")
        self._export_models()
        if improved:
            self.save("best.pt")
            self._export_models(prefix="best_")
            if self.ctx.is_main:
                log.info("best so far: %s %.4g at epoch %d -> best.pt, best_fusion_net.pt",
                         self.best["metric"], self.best["value"], epoch + 1)
        return summary

    def _note_if_best(self, summary: dict[str, float], epoch: int) -> bool:
        """Whether the task metric on the eval split beat every earlier epoch's (then ``self.best`` is updated)."""
        key = BEST_METRIC[self.cfg.task]
        value = summary.get(f"eval_{key}")
        if value is None or not math.isfinite(value):
            return False
        if self.best is not None and value <= self.best["value"]:
            return False
        self.best = {"metric": key, "value": float(value), "epoch": epoch}
        return True

    def _summary_line(self, epoch: int, s: dict[str, float]) -> str:
        def part(label: str, keys: list[tuple[str, str]]) -> str:
            items = [f"{name} {s[k]:.4g}" for k, name in keys if k in s and math.isfinite(s[k])]
            return f"{label}: " + ", ".join(items) if items else ""

        parts = [
            part("G", [("meta_loss_f", "L_f"), ("meta_loss_t_inner", "L_t inner"), ("meta_loss_t_outer", "L_t outer"),
                       ("sec_meta_step", "s/step")]),
            part("F,T", [("fusion_loss_f", "L_f"), ("fusion_loss_t", "L_t"), ("fusion_loss_t_via_f", "L_t via F"),
                         ("sec_fusion_step", "s/step")]),
            part("eval", [(k, k[5:]) for k in s if k.startswith("eval_") and k != "eval_samples"]),
            part("weights", [("w_ir_mean", "mean w_ir"), ("w_ir_in_ir_only", "w_ir on IR-only objects")]),
        ]
        return f"epoch {epoch + 1}/{self.cfg.epochs} | " + " | ".join(p for p in parts if p) + f" | lr {self.f_lr:.2e}"

    # ----------------------------------------------------------------------------------- the loop
    def fit(self, resume: str | Path | None = None) -> list[dict[str, float]]:
        """Train to ``cfg.epochs`` (continuing from ``resume`` if given); returns the per-epoch summaries.

        SIGINT / SIGTERM end it after the current step with a final ``last.pt`` and ``TrainingInterrupted``;
        the signal handlers then stay (ignoring late signals) until ``self.stop.uninstall()``.
        """
        if resume is not None:
            self.load(resume)
        self._open_outputs(resumed=resume is not None)
        self.stop.install()
        try:
            if self.ctx.is_main:
                n_f = sum(p.numel() for p in unwrap(self.fusion).parameters())
                n_g = sum(p.numel() for p in self.loss_gen.parameters()) if self.loss_gen is not None else 0
                n_t = sum(p.numel() for p in unwrap(self.task).parameters())
                log.info("%s training: task %s on %s, %d epochs × (%d meta + %d fusion steps), batch %d%s, "
                         "%d process(es) on %s; F %d, G %d, T %d parameters; ablations: %s; output %s",
                         "resumed" if resume else "starting", self.cfg.task, self.cfg.data, self.cfg.epochs,
                         self.cfg.meta_steps if self.ablations.meta_phase else 0,
                         self.fusion_steps if self.ablations.fusion_phase else 0, self.cfg.batch_size,
                         " with swap" if self.cfg.swap else "", self.ctx.world_size, self.device, n_f, n_g, n_t,
                         ", ".join(self.ablations.names()) or "none", self.out)
                if resume is None:
                    start = self._weight_maps(0)
                    self.history.append({"epoch": 0.0, **start})
                    if start:
                        log.info("before training | %s", ", ".join(f"{k} {v:.4g}" for k, v in start.items()))
            while self.position.epoch < self.cfg.epochs:
                if self.position.phase == "meta":
                    if self.ablations.meta_phase:
                        self.run_meta_phase()
                    self.position.phase, self.position.step = "fusion", 0
                if self.position.phase == "fusion":
                    if self.ablations.fusion_phase:
                        self.run_fusion_phase()
                    self.position.phase, self.position.step = "end", 0
                self.end_epoch()
                if self.position.epoch < self.cfg.epochs:
                    self.stop_if_requested()  # last.pt of the epoch's end is the final checkpoint
            return self.history
        finally:
            if not self.stop.settled:  # after a stop, late signals stay harmless until the process exits
                self.stop.uninstall()
            self._close_outputs()
