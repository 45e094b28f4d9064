"""Loss generator G: per-pixel weights (w_ir, w_vis) of the fusion loss, summing to one."""
from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import conv3x3, restormer_stage
from .config import LossGeneratorConfig


class LossGenerator(nn.Module):
    """Maps an IR/visible pair (each B×1×H×W) to B×2×H×W weights, softmax over the two channels."""

    def __init__(self, config: LossGeneratorConfig | None = None):
        super().__init__()
        self.config = config = config or LossGeneratorConfig()
        d, n, h, e, b = config.dim, config.num_blocks, config.heads, config.ffn_expansion, config.bias
        self.project_in_1 = conv3x3(1, d, b)
        self.project_in_2 = conv3x3(1, d, b)
        self.encoder1 = restormer_stage(d, n, h, e, b)
        self.encoder2 = restormer_stage(d, n, h, e, b)
        self.encoder3 = restormer_stage(2 * d, n, h, e, b)
        self.project_out_0 = conv3x3(2 * d, d, b)
        self.act = nn.PReLU(num_parameters=1, init=0.25)
        self.project_out_1 = conv3x3(d, 2, b)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        x1 = self.encoder1(self.project_in_1(ir))
        x2 = self.encoder2(self.project_in_2(vis))
        out = self.encoder3(torch.cat([x1, x2], dim=1))
        return self.project_out_1(self.act(self.project_out_0(out))).softmax(dim=1)
