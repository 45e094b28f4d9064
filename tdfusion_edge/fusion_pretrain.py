"""Train FusionNet on the fusion loss alone with fixed weights (w_ir = w_vis = ½).

This makes the default weights shipped in the package: no task network and no loss generator,
just L_int + α·L_grad on random crops of paired images (a folder of pairs and/or procedural
scenes). Run ``python -m tdfusion_edge.fusion_pretrain --help``.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tdfusion_edge.checkpoints import save_checkpoint
from tdfusion_edge.data.synthetic import make_scene
from tdfusion_edge.imaging import load_pair, luma_and_chroma, scan_pairs
from tdfusion_edge.kernels import fusion_loss
from tdfusion_edge.models import FusionNet, FusionNetConfig

log = logging.getLogger("tdfusion_edge.pretrain")


def load_folder_pairs(ir_dir: Path, vis_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """All readable, same-size pairs of two folders as (ir_y, vis_y) in [0,1]; bad pairs are logged."""
    scan = scan_pairs(ir_dir, vis_dir)
    out = []
    for stem, ir_path, vis_path in scan.pairs:
        try:
            pair = load_pair(ir_path, vis_path, resize=True)
        except Exception as exc:  # one unreadable pair must not stop a training run
            log.warning("skipping pair %s: %s", stem, exc)
            continue
        out.append((pair.ir_y, pair.vis_y))
    return out


def synthetic_pairs(count: int, size: tuple[int, int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` procedural scenes as (ir_y, vis_y) in [0,1]."""
    out = []
    for i in range(count):
        scene = make_scene(seed + i, *size)
        out.append((scene.ir.astype(np.float32) / 255.0, luma_and_chroma(scene.vis)[0]))
    return out


def random_crops(pairs, batch: int, crop: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random ``crop``×``crop`` patches (with random flips) as two B×1×crop×crop tensors."""
    irs, viss = [], []
    for idx in rng.integers(0, len(pairs), batch):
        ir, vis = pairs[idx]
        h, w = ir.shape
        if h < crop or w < crop:
            pad = ((0, max(0, crop - h)), (0, max(0, crop - w)))
            ir, vis = np.pad(ir, pad, mode="reflect"), np.pad(vis, pad, mode="reflect")
            h, w = ir.shape
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        a, b = ir[y:y + crop, x:x + crop], vis[y:y + crop, x:x + crop]
        if rng.random() < 0.5:
            a, b = a[:, ::-1], b[:, ::-1]
        irs.append(a.copy())
        viss.append(b.copy())
    return torch.from_numpy(np.stack(irs))[:, None], torch.from_numpy(np.stack(viss))[:, None]


def pretrain(pairs, steps: int, batch: int = 4, crop: int = 128, lr: float = 1e-3, seed: int = 0,
             config: FusionNetConfig | None = None, alpha: float = 1.0) -> tuple[FusionNet, list[float]]:
    """Train a fresh FusionNet with w = ½ for ``steps`` Adam steps (cosine decay); returns it and its loss curve."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = FusionNet(config)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    losses = []
    bar = tqdm(range(steps), desc="pretrain", unit="step")
    for _ in bar:
        ir, vis = random_crops(pairs, batch, crop, rng)
        fused = model(ir, vis)
        loss = fusion_loss(fused, ir, vis, torch.full_like(ir, 0.5), alpha=alpha)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite fusion loss at step {len(losses)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    return model.eval(), losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ir", type=Path, help="folder of infrared images (paired by file stem with --vis)")
    p.add_argument("--vis", type=Path, help="folder of visible images")
    p.add_argument("--synthetic", type=int, default=200, help="number of procedural scenes to add (0: none)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pairs = []
    if args.ir and args.vis:
        pairs += load_folder_pairs(args.ir, args.vis)
        log.info("%d folder pairs from %s / %s", len(pairs), args.ir, args.vis)
    if args.synthetic:
        pairs += synthetic_pairs(args.synthetic, (240, 320), args.seed)
    if not pairs:
        p.error("no training pairs: give --ir/--vis folders and/or --synthetic N")
    start = time.time()
    model, losses = pretrain(pairs, args.steps, args.batch, args.crop, args.lr, args.seed)
    prov = {"trainer": "tdfusion_edge.fusion_pretrain", "loss": "paper intensity (w=0.5) + gradient, alpha 1",
            "steps": args.steps, "batch": args.batch, "crop": args.crop, "lr": args.lr, "seed": args.seed,
            "pairs": len(pairs), "folder_pairs": str(args.ir) if args.ir else "none",
            "synthetic_scenes": args.synthetic, "final_loss_mean50": float(np.mean(losses[-50:])),
            "seconds": round(time.time() - start, 1)}
    save_checkpoint(model, args.out, prov)
    log.info("wrote %s (final loss %.4f)", args.out, prov["final_loss_mean50"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
