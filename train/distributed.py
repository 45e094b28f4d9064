"""Multi-process training with torch.distributed, launched by ``torchrun`` (gloo on CPU, nccl on CUDA).

F and T are wrapped in DistributedDataParallel for the fusion phase, where they see ordinary
forward/backward passes. The meta step cannot lean on DDP: it calls ``functional_call`` on the
unwrapped modules and takes gradients with ``torch.autograd.grad``, which DDP's hooks never see.
So the meta step averages its gradients itself, with the helpers here:

* ``mean_differentiable``: the inner gradient of F is averaged across processes *inside* the
  graph (its backward averages the incoming gradient too), so θ_F' is the same on every process,
  equal to one process's θ_F' on the global batch, and still a function of each process's θ_G;
* ``mean_``: plain in-place averages (T's inner gradient, G's meta-gradient).

Every collective is issued on one flattened tensor, so a step costs a handful of collectives.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from tdfusion_edge.errors import TDFusionError

log = logging.getLogger("tdfusion_edge.train")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, device; ``world_size == 1`` means no group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """True inside a process group of more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, checkpoints and images."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun's environment variables are set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun describes (or return a single-process context).

    On CUDA each process takes ``cuda:LOCAL_RANK`` and talks nccl; elsewhere gloo.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TDFusionError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (if this process joined one)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP around ``module`` when distributed (SyncBatchNorm on CUDA), else ``module`` itself."""
    if not ctx.enabled:
        return module
    if ctx.device.type == "cuda":
        # Batch statistics must span the global batch for the processes to match one process.
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[ctx.device.index])
    if ctx.is_main and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        log.warning("%s has BatchNorm layers: on CPU (no SyncBatchNorm) their batch statistics are per process",
                    type(module).__name__)
    return DistributedDataParallel(module)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (functional_call and state dicts need it)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def broadcast_module_(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every process (for modules DDP does not wrap)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def _flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        out.append(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


class _AllReduceMean(torch.autograd.Function):
    """Mean over processes whose backward is the same mean (the adjoint of averaging)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out / dist.get_world_size()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceMean.apply(grad.contiguous())


class GradReducer:
    """Averages gradients over the processes of ``ctx`` (a no-op for a single process)."""

    def __init__(self, ctx: DistContext):
        self.ctx = ctx

    def mean_differentiable(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Average that stays in the autograd graph (used on F's inner gradient)."""
        if not self.ctx.enabled:
            return list(tensors)
        return _unflatten(_AllReduceMean.apply(_flatten(tensors)), tensors)

    def mean_(self, tensors: Sequence[torch.Tensor | None]) -> None:
        """In-place average of plain tensors (None entries are skipped on every process alike)."""
        present = [t for t in tensors if t is not None]
        if not self.ctx.enabled or not present:
            return
        flat = _flatten([t.detach() for t in present])
        dist.all_reduce(flat)
        flat /= self.ctx.world_size
        for t, avg in zip(present, _unflatten(flat, present)):
            t.copy_(avg)

    def mean_scalar(self, value: float) -> float:
        """Average of a Python number over processes (for logging global losses)."""
        if not self.ctx.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(t)
        return float(t.item()) / self.ctx.world_size

    def any_true(self, flag: bool) -> bool:
        """True on every process when any process says True (a NaN on one stops them all)."""
        if not self.ctx.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.ctx.device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        """Wait for every process."""
        if self.ctx.enabled:
            dist.barrier()
