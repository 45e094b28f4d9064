"""FusionNet re-expressed for inference runtimes: the same maths in fewer passes over memory.

``DeployFusionNet(net)`` computes what ``FusionNet`` computes (fp32 max abs diff ~1e-6) but is
written for ONNX Runtime, TensorRT and eager inference rather than for training:

* The two encoder branches run as one tensor ``[x_ir; x_vis]`` with grouped convolutions, so every
  op covers both branches and the fusion module needs no concatenation.
* LayerNorm is folded into the 1×1 convolutions that follow it: γ, β and the mean subtraction go
  into the conv's weights and bias, so the norm itself is one per-pixel scale ``x · 1/σ``. Its
  statistics (mean and mean square over channels) are two small matmuls.
* MDTA never materialises normalised q, k or the attention output: per head one Gram matrix of
  ``[q; k]`` over all pixels gives q·kᵀ and both L2 norms in one pass, and the C×C softmax result
  is multiplied into the output projection, so ``project_out(attn @ v)`` is one matmul on v.
* No conv output is sliced at run time (``chunk`` becomes separate convs on weight slices); q and k
  come out head-interleaved for the Gram matrix.

Reductions (LayerNorm statistics, Gram matrices, norms, softmax) always run in FP32, also when the
convolutions run in FP16 (``dtype=torch.float16``): an exported half graph carries them as Cast
islands, which keeps FP16 engines stable (a sum of squares over ~300k pixels overflows FP16).
Inputs and output are float32 in every precision.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdfusion_edge.models import FusionNet
from tdfusion_edge.models.blocks import ChannelLayerNorm, RestormerBlock
from tdfusion_edge.models.cross_fusion import CrossFusion

LN_EPS = 1e-5
NORM_EPS = 1e-12  # F.normalize's eps
SQRT2 = math.sqrt(2.0)


def _w(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().float()


def _conv(weight: torch.Tensor, bias: torch.Tensor | None = None, groups: int = 1) -> nn.Conv2d:
    """An nn.Conv2d holding ``weight`` (Cout × Cin/groups × k × k); 3×3 kernels get zero padding 1."""
    cout, cin_g, k, _ = weight.shape
    conv = nn.Conv2d(cin_g * groups, cout, k, padding=k // 2, groups=groups, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv.requires_grad_(False)


def _depthwise(weights: Sequence[torch.Tensor]) -> nn.Conv2d:
    """Depthwise 3×3 conv over the concatenated channels of ``weights``."""
    w = torch.cat(list(weights))
    return _conv(w, groups=w.shape[0])


def _fold_norm(norm: ChannelLayerNorm, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a 1×1 conv that takes ``x · 1/σ`` instead of LayerNorm(x).

    conv(γ·(x−μ)/σ + β) = (W·diag(γ)·P)(x/σ) + W·β with P = I − 11ᵀ/C (P removes the mean).
    """
    w = weight.double().flatten(1)
    c = w.shape[1]
    centre = torch.eye(c, dtype=torch.float64) - 1.0 / c
    folded = w @ torch.diag(norm.weight.detach().double()) @ centre
    return folded.float()[:, :, None, None], (w @ norm.bias.detach().double()).float()


def _grouped_pointwise(norms: Sequence[ChannelLayerNorm] | None, weights: Sequence[torch.Tensor]) -> nn.Conv2d:
    """One grouped 1×1 conv: group g applies ``weights[g]`` (LayerNorm ``norms[g]`` folded in)."""
    ws, bs = [], []
    for g, weight in enumerate(weights):
        if norms is None:
            ws.append(weight)
        else:
            w, b = _fold_norm(norms[g], weight)
            ws.append(w)
            bs.append(b)
    return _conv(torch.cat(ws), torch.cat(bs) if bs else None, groups=len(weights))


def _head_interleave(dim: int, heads: int) -> torch.Tensor:
    """Rows of a [q; k] stack reordered to [q_h; k_h] per head."""
    c = dim // heads
    order = []
    for h in range(heads):
        order += list(range(h * c, (h + 1) * c)) + list(range(dim + h * c, dim + (h + 1) * c))
    return torch.tensor(order)


class ScaleByInverseStd(nn.Module):
    """x · 1/σ per pixel and group (σ over each group's channels, biased, eps 1e-5), stats in FP32."""

    def __init__(self, dim: int, groups: int):
        super().__init__()
        self.groups = groups
        rows = torch.zeros(groups, dim * groups)
        for g in range(groups):
            rows[g, g * dim:(g + 1) * dim] = 1.0 / dim
        self.register_buffer("mean_rows", rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        xf = x.float().reshape(b, c, h * w)
        rows = self.mean_rows.float()
        mu = torch.matmul(rows, xf)
        var = torch.clamp(torch.matmul(rows, xf * xf) - mu * mu, min=0.0)
        rstd = torch.rsqrt(var + LN_EPS).to(x.dtype).reshape(b, self.groups, 1, h, w)
        return (x.reshape(b, self.groups, c // self.groups, h, w) * rstd).reshape(b, c, h, w)


class AttentionMixer(nn.Module):
    """Turns q·kᵀ scores and squared norms into the matrix P·blockdiag(softmax(q̂·k̂ᵀ·t)).

    One mixer per attention site and group; ``temperature`` (heads) and ``projection`` (Cout × C, the
    1×1 conv after the attention) are stacked over ``G`` groups.
    """

    def __init__(self, temperatures: Sequence[torch.Tensor], projections: Sequence[torch.Tensor], heads: int):
        super().__init__()
        self.heads = heads
        groups = len(temperatures)
        cout, dim = projections[0].shape[:2]
        self.head_dim = dim // heads
        t = torch.stack([tt.detach().float().reshape(heads) for tt in temperatures])
        self.register_buffer("temperature", t.reshape(1, groups, heads, 1, 1))
        # P (Cout × heads·c) → heads × Cout × c so that M_h = P_h · A_h is one batched matmul.
        p = torch.stack([pp.detach().float().flatten(1).reshape(cout, heads, self.head_dim).permute(1, 0, 2)
                         for pp in projections])
        self.register_buffer("proj", p.unsqueeze(0).contiguous())     # 1 × G × h × Cout × c

    def forward(self, scores: torch.Tensor, q_sq: torch.Tensor, k_sq: torch.Tensor) -> torch.Tensor:
        """scores B×G×h×c×c, squared norms B×G×h×c → B×G×Cout×C (FP32)."""
        qn = torch.clamp(torch.sqrt(q_sq), min=NORM_EPS)
        kn = torch.clamp(torch.sqrt(k_sq), min=NORM_EPS)
        attn = torch.softmax(scores / (qn.unsqueeze(-1) * kn.unsqueeze(-2)) * self.temperature.float(), dim=-1)
        m = torch.matmul(self.proj.float(), attn)                     # B × G × h × Cout × c
        b, g, h, cout, c = m.shape
        return m.permute(0, 1, 3, 2, 4).reshape(b, g, cout, h * c)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU as Div → Erf → Add → Mul(x) → Mul(0.5): the order onnxruntime fuses into one op."""
    return x * (torch.erf(x / SQRT2) + 1.0) * 0.5


def gram(x: torch.Tensor, width: int) -> torch.Tensor:
    """Per channel group of ``width``: the Gram matrix over all pixels in FP32 → B×(C/width)×width×width."""
    b, c, h, w = x.shape
    xf = x.float().reshape(b, c // width, width, h * w)
    return torch.matmul(xf, xf.transpose(-2, -1))


def diagonal(g: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """Diagonal of a batch of small square matrices, as a product-and-sum every runtime has."""
    return (g * eye.float()).sum(-1)


def apply_mix(m: torch.Tensor, v: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + (B×G×Cout×C) · v per group, v B×(G·C)×H×W."""
    b, gc, h, w = v.shape
    groups = m.shape[1]
    out = torch.matmul(m.to(v.dtype), v.reshape(b, groups, gc // groups, h * w))
    return residual + out.reshape(b, groups * m.shape[2], h, w)


class DeployMDTA(nn.Module):
    """LayerNorm + MDTA + residual of one Restormer block, for G branches side by side."""

    def __init__(self, blocks: Sequence[RestormerBlock]):
        super().__init__()
        dim = blocks[0].norm1.weight.numel()
        heads = blocks[0].attn.heads
        norms = [b.norm1 for b in blocks]
        order = _head_interleave(dim, heads)
        qkv = [_w(b.attn.qkv) for b in blocks]
        dws = [_w(b.attn.qkv_dwconv) for b in blocks]
        self.groups = len(blocks)
        self.scale = ScaleByInverseStd(dim, len(blocks))
        self.pw_qk = _grouped_pointwise(norms, [w[: 2 * dim][order] for w in qkv])
        self.dw_qk = _depthwise([w[: 2 * dim][order] for w in dws])
        self.pw_v = _grouped_pointwise(norms, [w[2 * dim:] for w in qkv])
        self.dw_v = _depthwise([w[2 * dim:] for w in dws])
        self.mixer = AttentionMixer([b.attn.temperature for b in blocks],
                                    [_w(b.attn.project_out) for b in blocks], heads)
        self.register_buffer("eye", torch.eye(2 * self.mixer.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.scale(x)
        c = self.mixer.head_dim
        g = gram(self.dw_qk(self.pw_qk(xs)), 2 * c)                   # B × (G·h) × 2c × 2c
        b = g.shape[0]
        g = g.reshape(b, self.groups, self.mixer.heads, 2 * c, 2 * c)
        d = diagonal(g, self.eye)
        m = self.mixer(g[..., :c, c:], d[..., :c], d[..., c:])
        return apply_mix(m, self.dw_v(self.pw_v(xs)), x)


class DeployGDFN(nn.Module):
    """LayerNorm + gated-dconv feed-forward + residual of one Restormer block, G branches."""

    def __init__(self, blocks: Sequence[RestormerBlock]):
        super().__init__()
        dim = blocks[0].norm2.weight.numel()
        norms = [b.norm2 for b in blocks]
        w_in = [_w(b.ffn.project_in) for b in blocks]
        w_dw = [_w(b.ffn.dwconv) for b in blocks]
        hidden = w_in[0].shape[0] // 2
        self.scale = ScaleByInverseStd(dim, len(blocks))
        self.pw_gate = _grouped_pointwise(norms, [w[:hidden] for w in w_in])
        self.dw_gate = _depthwise([w[:hidden] for w in w_dw])
        self.pw_value = _grouped_pointwise(norms, [w[hidden:] for w in w_in])
        self.dw_value = _depthwise([w[hidden:] for w in w_dw])
        self.project_out = _grouped_pointwise(None, [_w(b.ffn.project_out) for b in blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.scale(x)
        gated = gelu(self.dw_gate(self.pw_gate(xs))) * self.dw_value(self.pw_value(xs))
        return x + self.project_out(gated)


class DeployBlock(nn.Sequential):
    """One Restormer block (attention half, feed-forward half) for G branches stacked on channels."""

    def __init__(self, blocks: Sequence[RestormerBlock]):
        super().__init__(DeployMDTA(blocks), DeployGDFN(blocks))


class DeployCrossFusion(nn.Module):
    """The cross-attention fusion module on the stacked ``[x1; x2]``, one Gram pass for both attentions."""

    def __init__(self, fm: CrossFusion):
        super().__init__()
        heads = fm.heads
        dim = fm.qkv1.weight.shape[1]
        c = dim // heads
        self.heads, self.head_dim = heads, c
        zeros = torch.zeros(c, dim, 1, 1)
        qkv1, qkv2 = _w(fm.qkv1), _w(fm.qkv2)
        dw1, dw2 = _w(fm.qkv1_dwconv), _w(fm.qkv2_dwconv)
        # Per head [q1_h, k1_h, q2_h, k2_h]: a dense conv over [x1; x2] whose off-branch blocks are zero.
        rows, dws = [], []
        for h in range(heads):
            for w, dw, branch in ((qkv1, dw1, 0), (qkv2, dw2, 1)):
                for part in (0, 1):                                    # q, then k
                    sl = slice(part * dim + h * c, part * dim + (h + 1) * c)
                    pair = [zeros, zeros]
                    pair[branch] = w[sl]
                    rows.append(torch.cat(pair, dim=1))
                    dws.append(dw[sl])
        self.pw_qk = _conv(torch.cat(rows))
        self.dw_qk = _depthwise(dws)
        self.pw_v = _grouped_pointwise(None, [qkv1[2 * dim:], qkv2[2 * dim:]])
        self.dw_v = _depthwise([dw1[2 * dim:], dw2[2 * dim:]])
        self.mixer = AttentionMixer([fm.temperature1, fm.temperature2],
                                    [_w(fm.project_mid1), _w(fm.project_mid2)], heads)
        self.register_buffer("eye", torch.eye(4 * c))
        self.pw_gate = _conv(_w(fm.project_E))
        self.dw_gate = _depthwise([_w(fm.project_E_d)])
        self.pw_value = _grouped_pointwise(None, [_w(fm.project_E1), _w(fm.project_E2)])
        self.dw_value = _depthwise([_w(fm.project_E1_d), _w(fm.project_E2_d)])
        self.project_out = _conv(torch.cat([_w(fm.project_out1), _w(fm.project_out2)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.head_dim
        g = gram(self.dw_qk(self.pw_qk(x)), 4 * c)                    # B × h × 4c × 4c
        d = diagonal(g, self.eye)
        q1, k1, q2, k2 = (slice(i * c, (i + 1) * c) for i in range(4))
        # Branch 1 keeps its values but is queried by branch 2 (q2·k1ᵀ), and vice versa (q1·k2ᵀ).
        scores = torch.stack([g[..., q2, k1], g[..., q1, k2]], dim=1)  # B × 2 × h × c × c
        q_sq = torch.stack([d[..., q2], d[..., q1]], dim=1)
        k_sq = torch.stack([d[..., k1], d[..., k2]], dim=1)
        both = apply_mix(self.mixer(scores, q_sq, k_sq), self.dw_v(self.pw_v(x)), x)
        gated = gelu(self.dw_gate(self.pw_gate(both))) * self.dw_value(self.pw_value(both))
        return both + self.project_out(gated)


class DeployFusionNet(nn.Module):
    """``FusionNet`` for inference: ``forward(ir, vis)``, B×1×H×W float32 in [0,1] each → B×1×H×W float32.

    ``dtype`` is the dtype of the convolutions and features (float32 or float16); reductions stay FP32.
    """

    def __init__(self, net: FusionNet, dtype: torch.dtype = torch.float32):
        super().__init__()
        if net.config.bias:
            raise ValueError("DeployFusionNet supports the bias-free released network only (config.bias=False)")
        self.config = net.config
        self.compute_dtype = dtype
        self.project_in = _grouped_pointwise(None, [_w(net.project_in_1), _w(net.project_in_2)])
        self.encoders = nn.Sequential(*(DeployBlock([b1, b2]) for b1, b2 in zip(net.encoder1, net.encoder2)))
        self.fusion = DeployCrossFusion(net.fusion)
        self.decoder = nn.Sequential(*(DeployBlock([b]) for b in net.decoder))
        self.project_out_0 = _conv(_w(net.project_out_0))
        self.project_out_1 = _conv(_w(net.project_out_1))
        self.eval().requires_grad_(False)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):      # reduction constants (buffers) stay FP32
                module.to(dtype)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        x = self.project_in(torch.cat([ir, vis], dim=1).to(self.compute_dtype))
        out = self.decoder(self.fusion(self.encoders(x)))
        out = self.project_out_1(F.leaky_relu(self.project_out_0(out), 0.01))
        return torch.sigmoid(out.float())


def deploy_module(net: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The inference form of any fusion network: ``DeployFusionNet`` for FusionNet, else the net's own
    ``deploy_module(dtype)`` (TDFusion-lite); same I/O either way (ir, vis float32 B×1×H×W → fused)."""
    if isinstance(net, FusionNet):
        return DeployFusionNet(net, dtype)
    if hasattr(net, "deploy_module"):
        return net.deploy_module(dtype)
    raise ValueError(f"no inference form for a {type(net).__name__}")
