"""Where the meta-gradient points, pixel by pixel, on scenes whose IR-only objects are known.

G is replaced by a free map of weight logits (one per pixel), so eq. 7 gives ∂L_t/∂w at every pixel of
the meta-train image instead of a sum over G's shared parameters. Per pair the probe reports that
gradient inside the IR-only objects and on the background (negative: more infrared lowers the task
loss), and how F' on the meta-test image responds to raising w_ir on the meta-train objects (inside
its objects and on its background: equal values mean the step of F spreads the change over the whole
image). Usage: ``python -m tdfusion_edge.train.meta_probe --set data=synthetic --warm 100``.
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call
from tqdm import tqdm

from tdfusion_edge.data.collate import collate_fn, swap_pairs
from tdfusion_edge.errors import TDFusionError

from .config import build_config
from .data_stream import eval_dataset, to_device
from .meta_step import MetaHyper, inner_fusion_update, meta_gradient, params_and_buffers


class FreeWeights(nn.Module):
    """A per-pixel weight map (softmax over two logit channels) that ignores its inputs."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits, 1)


@dataclass(frozen=True)
class ProbeResult:
    """One meta-train/meta-test pair: mean ∂L_t/∂logit(w_ir) and F' response, objects vs background."""

    grad_objects: float
    grad_background: float
    response_objects: float
    response_background: float
    loss_t: float


def _background(batch: dict) -> torch.Tensor:
    """Sample 0's unlabelled pixels (segmentation), else everything outside its IR-only objects."""
    return batch["mask"][0] == 0 if "mask" in batch else ~batch["ir_only"][0]


def _as_inner(batch: dict) -> dict:
    # the fusion crop is the whole task view, so the object masks line up with the weight map
    return {**batch, "crop_ir": batch["ir"], "crop_vis": batch["vis"]}


def probe_pair(nets, hyper: MetaHyper, inner: dict, outer: dict, t_optimizer=None, raise_by: float = 0.25
               ) -> ProbeResult:
    """Probe one pair of batches carrying ``ir_only`` masks; sample 0 of each must be unswapped (IR first)."""
    inner = _as_inner(inner)
    shape = (inner["ir"].shape[0], 2) + tuple(inner["ir"].shape[-2:])
    free = FreeWeights(torch.zeros(shape, device=inner["ir"].device))
    grads, loss_t, _ = meta_gradient(replace(nets, loss_gen=free), inner, outer, hyper, t_optimizer)
    g = grads["logits"][0, 0]
    objects, background = inner["ir_only"][0], _background(inner)

    f_params, f_buffers = params_and_buffers(nets.fusion_net)

    def f_prime_on_outer(w_ir: torch.Tensor) -> torch.Tensor:
        weights = FreeWeights(torch.log(torch.cat((w_ir, 1 - w_ir), 1)))
        f_prime, _ = inner_fusion_update(nets.fusion_net, f_params, f_buffers, weights, dict(weights.named_parameters()),
                                         inner["crop_ir"], inner["crop_vis"], hyper.inner_lr, hyper.loss)
        with torch.no_grad():
            return functional_call(nets.fusion_net, (f_prime, f_buffers), (outer["ir"], outer["vis"]))[0, 0]

    half = torch.full((shape[0], 1) + shape[2:], 0.5, device=g.device)
    raised = half.clone()
    raised[0, 0][objects] += raise_by
    delta = f_prime_on_outer(raised) - f_prime_on_outer(half)
    return ProbeResult(float(g[objects].mean()), float(g[background].mean()),
                       float(delta[outer["ir_only"][0]].mean()), float(delta[_background(outer)].mean()), float(loss_t))


def probe_batches(dataset, pairs: int, swap: bool, device: torch.device):
    """``pairs`` (meta-train, meta-test) batches of one scene each, with IR-only masks, on ``device``."""
    if not hasattr(dataset, "with_modal_masks"):
        raise TDFusionError("the probe needs scenes whose IR-only objects are known: use data=synthetic")
    dataset.with_modal_masks = True
    scenes = []
    for i in range(len(dataset)):
        sample = dataset[i]
        if sample["ir_only"].any():
            scenes.append(sample)
            if len(scenes) == 2 * pairs:
                break
    if len(scenes) < 2 * pairs:
        raise TDFusionError(f"the probe needs {2 * pairs} scenes with IR-only objects, the split has {len(scenes)} "
                            f"(use condition: night, or more val samples)")
    for k in range(pairs):
        batches = []
        for sample in scenes[2 * k:2 * k + 2]:
            b = collate_fn([sample])
            b = swap_pairs(b) if swap else b
            batches.append(to_device(b, device))
        yield batches[0], batches[1]


def main(argv: list[str] | None = None) -> int:
    """Build a run from config overrides, optionally train F and T a little, then probe and print a table."""
    parser = argparse.ArgumentParser(prog="python -m tdfusion_edge.train.meta_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="training config YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--warm", type=int, default=0, help="fusion steps (F on L_f, T on L_t) before probing")
    parser.add_argument("--pairs", type=int, default=4, help="meta-train/meta-test pairs to probe")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    args = parser.parse_args(argv)
    from .trainer import Trainer

    try:
        cfg = build_config(args.config, args.overrides)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, tmp, progress=not args.no_progress)
            trainer.warm_up(args.warm)
            nets = trainer.meta_nets()
            hyper = MetaHyper(inner_lr=cfg.inner_lr or trainer.f_lr, task_lr=trainer.t_opt.param_groups[0]["lr"],
                              inner_task_step=cfg.inner_task_step, loss=trainer.loss_settings)
            dataset = eval_dataset(cfg, trainer.spec, trainer.eval_split or "train")
            batches = tqdm(probe_batches(dataset, args.pairs, cfg.swap, trainer.device), total=args.pairs,
                           desc="probing meta-train/meta-test pairs", disable=args.no_progress, leave=False)
            rows = [probe_pair(nets, hyper, inner, outer, trainer.t_opt) for inner, outer in batches]
    except TDFusionError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"{'pair':>4} {'dLt/dw objects':>15} {'dLt/dw backgr.':>15} {'dF objects':>11} {'dF backgr.':>11} {'L_t':>6}")
    for i, r in enumerate(rows):
        print(f"{i:>4} {r.grad_objects:>+15.3e} {r.grad_background:>+15.3e} {r.response_objects:>+11.3e} "
              f"{r.response_background:>+11.3e} {r.loss_t:>6.3f}")
    mean = {k: float(np.mean([getattr(r, k) for r in rows])) for k in ProbeResult.__dataclass_fields__}
    print(f"mean {mean['grad_objects']:>+15.3e} {mean['grad_background']:>+15.3e} {mean['response_objects']:>+11.3e} "
          f"{mean['response_background']:>+11.3e} {mean['loss_t']:>6.3f}")
    print(f"F' response objects / background: {mean['response_objects'] / mean['response_background']:.2f} "
          f"(1.00: the step of F moves the whole image alike)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
