"""FLOPs of one forward pass of a fusion network, counted at the ATen-op level.

Convolutions and matrix products use torch's own formulas (2 FLOPs per multiply-add, as
``torch.utils.flop_counter``); element-wise ops, pooling and resampling — which matter for a network
whose learned part runs at low resolution — are counted per output element (bilinear resampling
as 7 FLOPs per output, average pooling as k² per output). Pure data movement (views, copies,
concatenation, padding, slicing) is free.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten
# Ops that only move or re-view memory.
_FREE = {
    aten.view, aten._unsafe_view, aten.reshape, aten.t, aten.transpose, aten.permute, aten.expand, aten.slice,
    aten.select, aten.detach, aten.clone, aten.cat, aten.constant_pad_nd, aten.replication_pad2d,
    aten.reflection_pad2d, aten.pixel_unshuffle, aten.pixel_shuffle, aten.unsqueeze, aten.squeeze,
    aten.alias, aten.split, aten.split_with_sizes, aten.unbind, aten._to_copy, aten.copy_, aten.empty_like,
    aten.zeros_like, aten.contiguous, aten.lift_fresh, aten.stack, aten.flip, aten.new_empty, aten.empty,
    aten.zeros, aten.full, aten.ones_like, aten.fill_, aten.zero_, aten.as_strided, aten.index,
}
_PER_OUTPUT = {aten.upsample_bilinear2d: 7, aten.upsample_nearest2d: 0}


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward pass: convolutions/matmuls, the rest, and their sum."""

    conv_matmul: int
    other: int

    @property
    def total(self) -> int:
        return self.conv_matmul + self.other

    def gflops(self) -> float:
        """Total in GFLOP."""
        return self.total / 1e9


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.conv_matmul = 0
        self.other = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            self.conv_matmul += int(flop_registry[packet](*args, **kwargs, out_val=out))
        elif packet not in _FREE:
            numel = sum(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
            if packet in _PER_OUTPUT:
                self.other += _PER_OUTPUT[packet] * numel
            elif packet is aten.avg_pool2d:
                k = args[1] if len(args) > 1 else kwargs["kernel_size"]
                k = list(k) if isinstance(k, (list, tuple)) else [k]
                self.other += numel * (k[0] * (k[1] if len(k) > 1 else k[0]))
            elif packet is aten.mean:
                self.other += args[0].numel()
            else:
                self.other += numel
        return out


def count_flops(model: nn.Module, height: int, width: int, batch: int = 1) -> FlopCount:
    """FLOPs of ``model(ir, vis)`` on one batch of ``height``×``width`` pairs (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    ir = torch.rand(batch, 1, height, width, device=device)
    vis = torch.rand(batch, 1, height, width, device=device)
    counter = _Counter()
    try:
        with torch.no_grad(), counter:
            model(ir, vis)
    finally:
        model.train(was_training)
    return FlopCount(counter.conv_matmul, counter.other)
