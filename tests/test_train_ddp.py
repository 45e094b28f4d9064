"""Two DDP processes (gloo, CPU) train to the same parameters as one process on the same global batch.

Covers the whole trainer: per-rank data shards, the swap twins, θ_F' averaged inside the graph, T's
inner gradient and G's meta-gradient averaged by hand, DDP around F and T in the fusion phase.
T's own randomness (dropout, stochastic depth) and BatchNorm batch statistics are switched off in
both runs: they differ between 2×1 and 1×2 images by design (no SyncBatchNorm on CPU).
"""
from __future__ import annotations

import os
import socket
import types

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from tdfusion_edge.train.config import build_config
from tdfusion_edge.train.trainer import Trainer

TINY_NET = "{dim: 4, num_blocks: 1, heads: 2}"
LR = 1e-3


def ddp_config():
    return build_config(overrides=[
        "epochs=1", "meta_steps=2", "fusion_steps=2", "batch_size=4", "num_workers=0", "crop_size=24",
        "synthetic={train: 8, val: 2, image_size: [32, 48]}", f"fusion_net={TINY_NET}",
        f"loss_generator={TINY_NET}", "metric_samples=1", "eval_samples=2", "weight_map_samples=1",
        f"lr={LR}", "g_lr=1e-2", "checkpoint_every=100", "keep_epoch_checkpoints=false"])


def deterministic_task(task_net: nn.Module) -> None:
    """No dropout / drop-path, BatchNorm frozen in eval mode (running statistics)."""
    for m in task_net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.train = types.MethodType(lambda self, mode=True: self, m)


def trained_state(out, ctx=None) -> dict[str, torch.Tensor]:
    """F, G, T after training, plus G before training (``G0.*``)."""
    from tdfusion_edge.train.distributed import unwrap

    trainer = Trainer(ddp_config(), out, ctx=ctx, progress=False)
    deterministic_task(trainer.task_net)
    state = {f"G0.{k}": v.clone() for k, v in trainer.loss_gen.state_dict().items()}
    trainer.fit()
    for prefix, module in (("F", unwrap(trainer.fusion)), ("G", trainer.loss_gen), ("T", unwrap(trainer.task))):
        state.update({f"{prefix}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    return state


def _worker(rank: int, world: int, port: int, out: str, result: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    from tdfusion_edge.train.distributed import init_distributed, shutdown

    ctx = init_distributed(torch.device("cpu"), timeout_s=300)
    try:
        state = trained_state(out, ctx)
        if rank == 0:
            torch.save(state, result)
        else:  # every rank must hold the same model
            torch.save(state, result + ".rank1")
    finally:
        shutdown(ctx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_two_gloo_processes_match_one_process(tmp_path):
    result = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), result), nprocs=2, join=True)
    ddp = torch.load(result, weights_only=True)
    ddp_rank1 = torch.load(result + ".rank1", weights_only=True)
    single = trained_state(tmp_path / "single")

    assert ddp.keys() == single.keys()
    for k in ddp:
        assert torch.equal(ddp[k], ddp_rank1[k]), f"ranks disagree on {k}"
    diffs = {k: float((ddp[k].float() - single[k].float()).abs().max()) for k in ddp}
    worst = max(diffs, key=diffs.get)
    # float32 sums in another order: far below one Adam step (lr) or one G step (g_lr)
    assert diffs[worst] < 0.02 * LR, f"{worst} differs by {diffs[worst]:.3g}"
    # and the run did move everything, G included (so the agreement is not trivial)
    assert max(float((single[f"G.{k[3:]}"] - v).abs().max()) for k, v in single.items() if k.startswith("G0.")) > 1e-3
