"""Restormer building blocks: channel LayerNorm, MDTA attention, gated-dconv FFN, the block."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdfusion_edge.kernels import layer_norm_channels, mdta_attention


def conv1x1(cin: int, cout: int, bias: bool) -> nn.Conv2d:
    """Pointwise convolution."""
    return nn.Conv2d(cin, cout, kernel_size=1, bias=bias)


def dwconv3x3(channels: int, bias: bool) -> nn.Conv2d:
    """Depthwise 3×3 convolution, zero padding 1."""
    return nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=bias)


def conv3x3(cin: int, cout: int, bias: bool) -> nn.Conv2d:
    """Dense 3×3 convolution, zero padding 1."""
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=bias)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """B×(heads·C)×H×W → B×heads×C×(H·W)."""
    b, c, h, w = x.shape
    return x.reshape(b, heads, c // heads, h * w)


def merge_heads(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """B×heads×C×(H·W) → B×(heads·C)×H×W."""
    b, heads, c, _ = x.shape
    return x.reshape(b, heads * c, h, w)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of an NCHW tensor (eps 1e-5, biased variance), with weight and bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_channels(x, self.weight, self.bias)


class MDTA(nn.Module):
    """Multi-Dconv-head Transposed Attention: attention across channels, per head."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = conv1x1(dim, dim * 3, bias)
        self.qkv_dwconv = dwconv3x3(dim * 3, bias)
        self.project_out = conv1x1(dim, dim, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = (split_heads(t, self.heads) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        return self.project_out(merge_heads(mdta_attention(q, k, v, self.temperature), h, w))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward: gelu(x1)·x2 of a depthwise-convolved expansion."""

    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = conv1x1(dim, hidden * 2, bias)
        self.dwconv = dwconv3x3(hidden * 2, bias)
        self.project_out = conv1x1(hidden, dim, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class RestormerBlock(nn.Module):
    """x + MDTA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, dim: int, heads: int, expansion: float, bias: bool):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = MDTA(dim, heads, bias)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GDFN(dim, expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def restormer_stage(dim: int, blocks: int, heads: int, expansion: float, bias: bool) -> nn.Sequential:
    """A stack of Restormer blocks at one width."""
    return nn.Sequential(*(RestormerBlock(dim, heads, expansion, bias) for _ in range(blocks)))
