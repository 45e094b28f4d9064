"""Tiny F, G and a two-conv stand-in for T, for tests of the meta step (fast, and exact in float64)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdfusion_edge.models import FusionNet, FusionNetConfig, LossGenerator, LossGeneratorConfig
from tdfusion_edge.train.meta_step import MetaNets

TINY = dict(dim=4, num_blocks=1, heads=2, ffn_expansion=2.0, bias=False)


class TinySegmenter(nn.Module):
    """Stand-in task net (two convs); forward(images, targets) returns the loss, as TaskNet does."""

    def __init__(self, num_classes: int = 3, width: int = 6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, num_classes, 3, padding=1)

    def forward(self, images, targets):
        return F.cross_entropy(self.conv2(torch.tanh(self.conv1(images))), targets)

    @staticmethod
    def to_task_input(fused, vis_crcb=None):
        return fused.repeat(1, 3, 1, 1)


def make_batch(size=10, batch=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ir = torch.rand(batch, 1, size, size, generator=g, dtype=dtype)
    vis = torch.rand(batch, 1, size, size, generator=g, dtype=dtype)
    mask = torch.randint(0, 3, (batch, size, size), generator=g)
    return {"ir": ir, "vis": vis, "crop_ir": ir.clone(), "crop_vis": vis.clone(), "mask": mask}


def make_nets(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    f = FusionNet(FusionNetConfig(**TINY)).to(dtype)
    g = LossGenerator(LossGeneratorConfig(**TINY)).to(dtype)
    t = TinySegmenter().to(dtype)
    return MetaNets(f, g, t, TinySegmenter.to_task_input)
