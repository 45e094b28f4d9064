"""Cross-attention fusion module: each branch's queries attend the other branch, then gated mixing."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdfusion_edge.kernels import mdta_attention

from .blocks import conv1x1, dwconv3x3, merge_heads, split_heads


class CrossFusion(nn.Module):
    """Fuses two width-``dim`` feature maps into one of width ``2·dim``."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.temperature1 = nn.Parameter(torch.ones(heads, 1, 1))
        self.temperature2 = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv1 = conv1x1(dim, dim * 3, bias)
        self.qkv1_dwconv = dwconv3x3(dim * 3, bias)
        self.qkv2 = conv1x1(dim, dim * 3, bias)
        self.qkv2_dwconv = dwconv3x3(dim * 3, bias)
        self.project_mid1 = conv1x1(dim, dim, bias)
        self.project_mid2 = conv1x1(dim, dim, bias)
        self.project_E = conv1x1(dim * 2, dim * 8, bias)
        self.project_E_d = dwconv3x3(dim * 8, bias)
        self.project_E1 = conv1x1(dim, dim * 4, bias)
        self.project_E1_d = dwconv3x3(dim * 4, bias)
        self.project_E2 = conv1x1(dim, dim * 4, bias)
        self.project_E2_d = dwconv3x3(dim * 4, bias)
        self.project_out1 = conv1x1(dim * 4, dim * 2, bias)
        self.project_out2 = conv1x1(dim * 4, dim * 2, bias)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        h, w = x1.shape[-2:]
        q1, k1, v1 = (split_heads(t, self.heads) for t in self.qkv1_dwconv(self.qkv1(x1)).chunk(3, dim=1))
        q2, k2, v2 = (split_heads(t, self.heads) for t in self.qkv2_dwconv(self.qkv2(x2)).chunk(3, dim=1))
        # Branch 1 keeps its own values but is queried by branch 2, and vice versa.
        out1 = merge_heads(mdta_attention(q2, k1, v1, self.temperature1), h, w)
        out2 = merge_heads(mdta_attention(q1, k2, v2, self.temperature2), h, w)
        x1 = x1 + self.project_mid1(out1)
        x2 = x2 + self.project_mid2(out2)
        both = torch.cat([x1, x2], dim=1)
        g1, g2 = self.project_E_d(self.project_E(both)).chunk(2, dim=1)
        y1 = F.gelu(g1) * self.project_E1_d(self.project_E1(x1))
        y2 = F.gelu(g2) * self.project_E2_d(self.project_E2(x2))
        return both + self.project_out1(y1) + self.project_out2(y2)
