"""Distil a teacher fusion network into TDFusion-lite on real pairs.

Loss per batch of random crops (s = student, t = teacher's raw output, both in [0,1]):

    L = |s − t|₁ + λ_grad·(|∂x s − ∂x t|₁ + |∂y s − ∂y t|₁) + λ_fusion·L_f(s; ir, vis, w)

with Sobel derivatives and L_f the reference fusion loss (paper intensity form, α = 1); w is the
teacher's loss generator G's w_ir when one is given, ½ otherwise. The teacher runs once per item
(``distill_data.build_cache``); training reads crops from memory-mapped cache files. Checkpoints are
training states (``last.pt``, exact resume) plus the model files ``best.pt`` (best held-out PSNR vs
the teacher) and ``lite_fusion_net.pt`` (what to ship), all atomic and read with weights_only.
"""
from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tdfusion_edge.errors import TDFusionError
from tdfusion_edge.kernels import fusion_loss
from tdfusion_edge.kernels.fusion_loss_reference import sobel_xy
from tdfusion_edge.lite_weights import save_lite
from tdfusion_edge.models import LiteFusionNet, LiteFusionNetConfig
from tdfusion_edge.models.config import LITE_LEGACY_FIELDS

from .distill_data import build_cache, discover
from .state import capture_rng, load_state, restore_rng, save_state

log = logging.getLogger("tdfusion_edge.distill")
STATE_KIND = "distill"


@dataclass
class DistillConfig:
    """Everything that defines a distillation run (stored in its checkpoints; resume reuses it)."""

    teacher: str = "default"
    loss_generator: str | None = None
    teacher_backend: str = "auto"
    data: list[str] = field(default_factory=list)
    cache: str | None = None
    steps: int = 4000
    batch: int = 8
    crop: int = 128
    lr: float = 2e-3
    lr_min_ratio: float = 0.05
    lambda_grad: float = 0.5
    lambda_fusion: float = 0.1
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5])
    video_frames: int = 40
    max_pairs: int = 0
    val_fraction: float = 0.15
    val_every: int = 500
    checkpoint_every: int = 250
    log_every: int = 50
    seed: int = 0
    threads: int = 0
    width: int = 32
    factor: int = 4
    refine: int = 16
    refine_hidden: int = 1
    refine_context: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DistillConfig":
        known = {f.name for f in fields(cls)}
        values = {**LITE_LEGACY_FIELDS, **values}  # a state from before the refiner fields existed
        return cls(**{k: v for k, v in values.items() if k in known})

    def check(self) -> None:
        """One-line errors for impossible settings."""
        for name in ("steps", "batch", "val_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise TDFusionError(f"--{name.replace('_', '-')} must be at least 1")
        if self.crop < 16:
            raise TDFusionError(f"--crop must be at least 16, got {self.crop}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise TDFusionError(f"--lr must be a positive number, got {self.lr}")
        if not self.scales or any(not 0.05 <= s <= 1.0 for s in self.scales):
            raise TDFusionError(f"--scales must be in (0.05, 1], got {self.scales}")
        if not self.data:
            raise TDFusionError("give at least one --data folder")
        try:
            self.student_config()
        except ValueError as exc:
            raise TDFusionError(f"student size: {exc}") from None

    def student_config(self) -> LiteFusionNetConfig:
        """The size of the network this run trains."""
        return LiteFusionNetConfig(self.width, self.factor, self.refine, self.refine_hidden, self.refine_context)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor,
                 w_ir: torch.Tensor, cfg: DistillConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (L1, gradient L1, fusion loss) for one batch."""
    l1 = (student - teacher).abs().mean()
    sx, sy = sobel_xy(student)
    tx, ty = sobel_xy(teacher)
    grad = (sx - tx).abs().mean() + (sy - ty).abs().mean()
    lf = fusion_loss(student, ir, vis, w_ir, alpha=1.0)
    total = l1 + cfg.lambda_grad * grad + cfg.lambda_fusion * lf
    return total, {"loss": float(total.detach()), "l1": float(l1.detach()), "grad": float(grad.detach()),
                   "fusion": float(lf.detach())}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two [0,1] images (peak 1)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def git_commit() -> str:
    """The commit of the source tree (+ '-dirty' when it has changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode:
        return "unknown"
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def load_teacher(spec: str, threads: int, backend: str = "auto"):
    """(fuse(ir, vis) → raw output, weight hash, description) of a teacher fusion network."""
    from tdfusion_edge.checkpoints import default_weights_path, resolve_weights
    from tdfusion_edge.export.backends import create_backend, load_weights
    from tdfusion_edge.export.engine_cache import model_hash

    net = load_weights(None if spec in (None, "default") else spec)
    runner = create_backend(backend, net=net, device="cpu", threads=threads or None)
    path = resolve_weights(spec or "default")
    # A built-in model is named, not located: the file's provenance must not carry this machine's paths.
    where = f"built-in {path.name}" if path.parent == default_weights_path().parent else str(path)
    return runner.fuse, model_hash(net), f"{type(net).__name__} from {where}"


def load_generator(spec: str | None):
    """w_ir(ir, vis) of the teacher's loss generator G, or None."""
    if not spec:
        return None
    from tdfusion_edge.checkpoints import load_model

    gen = load_model(spec, "LossGenerator")[0]

    def w_ir(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = gen(torch.from_numpy(ir)[None, None], torch.from_numpy(vis)[None, None])
        return out[0, 0].numpy()
    return w_ir


class Distiller:
    """Builds data, cache, student and optimizer from a DistillConfig; ``fit()`` trains and writes ``out``."""

    def __init__(self, cfg: DistillConfig, out: str | Path, progress: bool = True):
        cfg.check()
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.step = 0
        self.history: list[dict] = []
        self.best_psnr = -math.inf
        self._meter: dict[str, list[float]] = {}
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.student = LiteFusionNet(cfg.student_config())
        self.opt = torch.optim.Adam(self.student.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.steps,
                                                                eta_min=cfg.lr * cfg.lr_min_ratio)
        self._log_handler: logging.Handler | None = None

    # ------------------------------------------------------------------ data
    def prepare(self) -> None:
        """Find the pairs, split them, fill the teacher cache and memory-map it."""
        cfg = self.cfg
        items = discover(cfg.data, cfg.video_frames, cfg.val_fraction, cfg.max_pairs)
        fuse, teacher_hash, self.teacher_desc = load_teacher(cfg.teacher, cfg.threads, cfg.teacher_backend)
        self.teacher_hash = teacher_hash
        cache = Path(cfg.cache) if cfg.cache else self.out / "teacher_cache"
        rows = build_cache(items, cfg.scales, cache / teacher_hash[:16], fuse, load_generator(cfg.loss_generator),
                           self.progress)
        self.train_rows = [(it, s, np.load(p, mmap_mode="r")) for it, s, p in rows if not it.val]
        # Held-out check at the native scale and the smallest one (what the live app feeds at 240×320).
        val_scales = {max(cfg.scales), min(cfg.scales)}
        self.val_rows = [(it, s, np.load(p, mmap_mode="r")) for it, s, p in rows if it.val and s in val_scales]
        if not self.train_rows:
            raise TDFusionError("every pair is in the held-out split; lower --val-fraction or add data")
        n_train = len({it.name for it, _, _ in self.train_rows})
        n_val = len({it.name for it, _, _ in self.val_rows})
        self.data_summary = {"train_pairs": n_train, "val_pairs": n_val, "scales": cfg.scales,
                             "folders": [str(d) for d in cfg.data]}
        log.info("data: %d training pairs, %d held out, scales %s, teacher %s", n_train, n_val, cfg.scales,
                 self.teacher_desc)

    def _batch(self) -> tuple[torch.Tensor, ...]:
        """Random crops (with flips) from random training items: ir, vis, teacher, w_ir (B×1×c×c each)."""
        cfg, c = self.cfg, self.cfg.crop
        out = []
        for _ in range(cfg.batch):
            _, _, arr = self.train_rows[np.random.randint(len(self.train_rows))]
            h, w = arr.shape[1:]
            y = np.random.randint(0, max(1, h - c + 1))
            x = np.random.randint(0, max(1, w - c + 1))
            patch = np.asarray(arr[:, y:y + c, x:x + c], np.float32)
            if patch.shape[1] < c or patch.shape[2] < c:
                patch = np.pad(patch, ((0, 0), (0, c - patch.shape[1]), (0, c - patch.shape[2])), mode="reflect")
            if np.random.rand() < 0.5:
                patch = patch[:, :, ::-1]
            if patch.shape[0] == 3:
                patch = np.concatenate([patch, np.full_like(patch[:1], 0.5)])
            out.append(np.ascontiguousarray(patch))
        t = torch.from_numpy(np.stack(out))
        return t[:, 0:1], t[:, 1:2], t[:, 2:3], t[:, 3:4]

    # ------------------------------------------------------------------ checkpoints
    def state_payload(self) -> dict:
        return {"kind": STATE_KIND, "config": self.cfg.to_dict(), "step": self.step,
                "student": self.student.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "rng": capture_rng(), "history": self.history,
                "best_psnr": self.best_psnr if math.isfinite(self.best_psnr) else None,
                "meter": {k: list(v) for k, v in self._meter.items()}}  # the open log window survives a resume

    def load(self, path: str | Path) -> None:
        """Restore a state written by ``save`` (exact: weights, Adam moments, schedule, RNG, position)."""
        state = load_state(path)
        if state.get("kind") != STATE_KIND:
            raise TDFusionError(f"{path} is a training state, but not of a distillation run")
        try:
            self.student.load_state_dict(state["student"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TDFusionError(f"{path} does not fit this student network: {first[:200]}") from None
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self._meter = {str(k): [float(x) for x in v] for k, v in dict(state.get("meter", {})).items()}
        best = state.get("best_psnr")
        self.best_psnr = -math.inf if best is None else float(best)
        restore_rng(state["rng"])

    def save(self) -> Path:
        return save_state(self.state_payload(), self.out / "last.pt")

    def provenance(self, val_psnr: float | None) -> dict:
        cfg = self.cfg
        return {"trainer": "tdfusion_edge.train.distill", "teacher": self.teacher_desc,
                "teacher_hash": self.teacher_hash, "loss_generator": cfg.loss_generator or "none (w = 0.5)",
                "loss": (f"L1 + {cfg.lambda_grad}*SobelL1 vs teacher raw output + {cfg.lambda_fusion}*fusion loss "
                         f"(paper intensity, alpha 1)"),
                "data": json.dumps(self.data_summary), "steps": self.step, "batch": cfg.batch, "crop": cfg.crop,
                "lr": cfg.lr, "seed": cfg.seed, "val_psnr_db": val_psnr, "commit": git_commit()}

    # ------------------------------------------------------------------ training
    def validate(self) -> float:
        """Mean PSNR (dB) of the student vs the teacher on the held-out items (full images)."""
        if not self.val_rows:
            return float("nan")
        self.student.eval()
        values = []
        with torch.inference_mode():
            for _, _, arr in self.val_rows:
                a = np.asarray(arr, np.float32)
                s = self.student(torch.from_numpy(a[0])[None, None], torch.from_numpy(a[1])[None, None])
                values.append(psnr(s[0, 0].numpy(), a[2]))
        self.student.train()
        return float(np.mean(values))

    def _log_window(self) -> None:
        means = {k: float(np.mean(v)) for k, v in self._meter.items()}
        self._meter.clear()
        row = {"step": self.step, "lr": self.opt.param_groups[0]["lr"], **means}
        self.history.append(row)
        log.info("step %d  loss %.5f  l1 %.5f  grad %.5f  fusion %.5f  lr %.2e  %.3f s/step", self.step,
                 means.get("loss", 0), means.get("l1", 0), means.get("grad", 0), means.get("fusion", 0), row["lr"],
                 means.get("sec", 0))

    def _validate_and_keep_best(self) -> None:
        if not self.val_rows:
            return
        value = self.validate()
        self.history.append({"step": self.step, "val_psnr": value})
        log.info("step %d  held-out PSNR vs teacher %.2f dB (best %.2f)", self.step, value, max(value, self.best_psnr))
        if math.isfinite(value) and value > self.best_psnr:
            self.best_psnr = value
            save_lite(self.student, self.out / "best.pt", self.provenance(value))

    def _open_log(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        self._log_handler = logging.FileHandler(self.out / "distill.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(self._log_handler)
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)

    def fit(self, stop_after: int | None = None) -> Path:
        """Train to ``cfg.steps`` (or ``stop_after`` more steps); returns the shipped model file."""
        cfg = self.cfg
        self._open_log()
        try:
            end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
            self.student.train()
            with tqdm(total=cfg.steps, initial=self.step, desc="distill", unit="step", disable=not self.progress,
                      dynamic_ncols=True) as bar:
                while self.step < end:
                    t0 = time.perf_counter()
                    ir, vis, teacher, w_ir = self._batch()
                    loss, parts = distill_loss(self.student(ir, vis), teacher, ir, vis, w_ir, cfg)
                    if not torch.isfinite(loss):
                        raise TDFusionError(f"distillation loss is not finite at step {self.step + 1}; "
                                            f"lower --lr and --resume from {self.out / 'last.pt'}")
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt.step()
                    self.sched.step()
                    self.step += 1
                    parts["sec"] = time.perf_counter() - t0
                    for k, v in parts.items():
                        self._meter.setdefault(k, []).append(v)
                    bar.set_postfix(loss=f"{parts['loss']:.4f}", refresh=False)
                    bar.update(1)
                    if self.step % cfg.log_every == 0:
                        self._log_window()
                    if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                        self._validate_and_keep_best()
                    if self.step % cfg.checkpoint_every == 0 or self.step == end:
                        self.save()
            return self._finish()
        finally:
            if self._log_handler is not None:
                log.removeHandler(self._log_handler)
                self._log_handler.close()
                self._log_handler = None

    def _finish(self) -> Path:
        """Write ``lite_fusion_net.pt``: the best held-out model when there is one, else the current."""
        target = self.out / "lite_fusion_net.pt"
        best = self.out / "best.pt"
        if self.step >= self.cfg.steps and best.is_file():
            from tdfusion_edge.lite_weights import load_lite

            model, info = load_lite(best)
            save_lite(model, target, info["provenance"])
        else:
            save_lite(self.student, target, self.provenance(None))
        (self.out / "history.json").write_text(json.dumps(self.history, indent=1))
        return target


def run_distill(cfg: DistillConfig, out: str | Path, resume: str | Path | None = None,
                stop_after: int | None = None, progress: bool = True) -> Path:
    """Prepare data and teacher cache, optionally resume, train; returns the written model file."""
    if resume is not None:
        state = load_state(resume)
        if state.get("kind") != STATE_KIND:
            raise TDFusionError(f"{resume} is a training state, but not of a distillation run")
        cfg = DistillConfig.from_dict(dict(state["config"]))  # the run continues exactly as it was set up
    distiller = Distiller(cfg, out, progress)
    distiller.prepare()
    if resume is not None:
        distiller.load(resume)
        log.info("resumed %s at step %d", resume, distiller.step)
    return distiller.fit(stop_after)
