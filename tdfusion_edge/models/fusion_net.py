"""FusionNet F: two Restormer encoders, cross-attention fusion, a Restormer decoder, sigmoid output."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import conv3x3, restormer_stage
from .config import FusionNetConfig
from .cross_fusion import CrossFusion


class FusionNet(nn.Module):
    """Fuses IR and visible luminance (each B×1×H×W in [0,1]) into one B×1×H×W image in (0,1)."""

    def __init__(self, config: FusionNetConfig | None = None):
        super().__init__()
        self.config = config = config or FusionNetConfig()
        d, n, h, e, b = config.dim, config.num_blocks, config.heads, config.ffn_expansion, config.bias
        self.project_in_1 = conv3x3(1, d, b)
        self.project_in_2 = conv3x3(1, d, b)
        self.encoder1 = restormer_stage(d, n, h, e, b)
        self.encoder2 = restormer_stage(d, n, h, e, b)
        self.fusion = CrossFusion(d, h, b)
        self.decoder = restormer_stage(2 * d, n, h, e, b)
        self.project_out_0 = conv3x3(2 * d, d, b)
        self.project_out_1 = conv3x3(d, 1, b)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        x1 = self.encoder1(self.project_in_1(ir))
        x2 = self.encoder2(self.project_in_2(vis))
        out = self.decoder(self.fusion(x1, x2))
        out = self.project_out_1(F.leaky_relu(self.project_out_0(out), 0.01))
        return torch.sigmoid(out)
