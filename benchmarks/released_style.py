"""FusionNet written the way the released ReFusion code writes it: the eager baseline of the benchmarks.

Benchmark-only code, written from the network description in the design notes: LayerNorm by
rearranging to B×HW×C and normalising the last axis, MDTA with ``F.normalize``, matmul and softmax
on B×heads×C×HW views. Its parameter names are those of ``tdfusion_edge.models.FusionNet``, so
``ReleasedStyleFusionNet.from_fusion_net(net)`` copies any loaded checkpoint into it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def to_3d(x: torch.Tensor) -> torch.Tensor:
    """b c h w → b (h w) c, as the released code's ``rearrange``."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def to_4d(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """b (h w) c → b c h w."""
    b, _, c = x.shape
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


class WithBiasLayerNorm(nn.Module):
    """Released LayerNorm body: mean and biased variance over the last axis."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(sigma + 1e-5) * self.weight + self.bias


class LayerNorm(nn.Module):
    """Channel LayerNorm through a B×HW×C rearrangement."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = WithBiasLayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return to_4d(self.body(to_3d(x)), h, w)


def _attend(q, k, v, temperature, heads):
    b, c, h, w = q.shape
    q, k, v = (t.reshape(b, heads, c // heads, h * w) for t in (q, k, v))
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    attn = attn.softmax(dim=-1)
    return (attn @ v).reshape(b, c, h, w)


class Attention(nn.Module):
    """Released MDTA."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x):
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        return self.project_out(_attend(q, k, v, self.temperature, self.num_heads))


class FeedForward(nn.Module):
    """Released GDFN."""

    def __init__(self, dim: int, factor: float):
        super().__init__()
        hidden = int(dim * factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x):
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """Released Restormer block."""

    def __init__(self, dim: int, heads: int, factor: float):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = LayerNorm(dim)
        self.ffn = FeedForward(dim, factor)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class FusionModule(nn.Module):
    """Released cross-attention fusion module (``FM``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature1 = nn.Parameter(torch.ones(heads, 1, 1))
        self.temperature2 = nn.Parameter(torch.ones(heads, 1, 1))
        pw = lambda i, o: nn.Conv2d(i, o, 1, bias=False)  # noqa: E731
        dw = lambda c: nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)  # noqa: E731
        self.qkv1, self.qkv1_dwconv = pw(dim, dim * 3), dw(dim * 3)
        self.qkv2, self.qkv2_dwconv = pw(dim, dim * 3), dw(dim * 3)
        self.project_mid1, self.project_mid2 = pw(dim, dim), pw(dim, dim)
        self.project_E, self.project_E_d = pw(dim * 2, dim * 8), dw(dim * 8)
        self.project_E1, self.project_E1_d = pw(dim, dim * 4), dw(dim * 4)
        self.project_E2, self.project_E2_d = pw(dim, dim * 4), dw(dim * 4)
        self.project_out1, self.project_out2 = pw(dim * 4, dim * 2), pw(dim * 4, dim * 2)

    def forward(self, x1, x2):
        q1, k1, v1 = self.qkv1_dwconv(self.qkv1(x1)).chunk(3, dim=1)
        q2, k2, v2 = self.qkv2_dwconv(self.qkv2(x2)).chunk(3, dim=1)
        x1 = x1 + self.project_mid1(_attend(q2, k1, v1, self.temperature1, self.heads))
        x2 = x2 + self.project_mid2(_attend(q1, k2, v2, self.temperature2, self.heads))
        both = torch.cat([x1, x2], dim=1)
        g1, g2 = self.project_E_d(self.project_E(both)).chunk(2, dim=1)
        y1 = F.gelu(g1) * self.project_E1_d(self.project_E1(x1))
        y2 = F.gelu(g2) * self.project_E2_d(self.project_E2(x2))
        return both + self.project_out1(y1) + self.project_out2(y2)


class ReleasedStyleFusionNet(nn.Module):
    """The released fusion network, eager and unoptimised (dim 16, 2 blocks, 8 heads, FFN ×2)."""

    def __init__(self, dim: int = 16, blocks: int = 2, heads: int = 8, factor: float = 2.0):
        super().__init__()
        self.project_in_1 = nn.Conv2d(1, dim, 3, padding=1, bias=False)
        self.project_in_2 = nn.Conv2d(1, dim, 3, padding=1, bias=False)
        self.encoder1 = nn.Sequential(*(TransformerBlock(dim, heads, factor) for _ in range(blocks)))
        self.encoder2 = nn.Sequential(*(TransformerBlock(dim, heads, factor) for _ in range(blocks)))
        self.fusion = FusionModule(dim, heads)
        self.decoder = nn.Sequential(*(TransformerBlock(2 * dim, heads, factor) for _ in range(blocks)))
        self.project_out_0 = nn.Conv2d(2 * dim, dim, 3, padding=1, bias=False)
        self.project_out_1 = nn.Conv2d(dim, 1, 3, padding=1, bias=False)

    @classmethod
    def from_fusion_net(cls, net: nn.Module) -> "ReleasedStyleFusionNet":
        """Copy a ``FusionNet``'s weights (names map one to one, LayerNorms gain ``.body``)."""
        cfg = net.config
        if cfg.bias:
            raise ValueError("the released network has no conv bias")
        model = cls(cfg.dim, cfg.num_blocks, cfg.heads, cfg.ffn_expansion)
        state = {}
        for key, value in net.state_dict().items():
            parts = key.split(".")
            if len(parts) > 2 and parts[-2] in ("norm1", "norm2"):
                key = ".".join(parts[:-1] + ["body", parts[-1]])
            state[key] = value
        model.load_state_dict(state, strict=True)
        return model.eval()

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        x1 = self.encoder1(self.project_in_1(ir))
        x2 = self.encoder2(self.project_in_2(vis))
        out = self.decoder(self.fusion(x1, x2))
        return torch.sigmoid(self.project_out_1(F.leaky_relu(self.project_out_0(out), 0.01)))
