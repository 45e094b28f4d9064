"""An independent, op-by-op oracle of the released fusion network, written from the design notes.

It reads the released state-dict layout directly (``x.weight`` keys) and computes the forward pass
the way the released code is described: LayerNorm by rearranging to B×HW×C, q/k L2-normalised with
``F.normalize``, attention by matmul and softmax. It shares no code with ``tdfusion_edge.models``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _conv(sd, name, x, padding=0, groups=1):
    w = sd[f"{name}.weight"]
    return F.conv2d(x, w, sd.get(f"{name}.bias"), padding=padding, groups=groups)


def _dw(sd, name, x):
    return _conv(sd, name, x, padding=1, groups=x.shape[1])


def _layer_norm(sd, name, x):
    b, c, h, w = x.shape
    t = x.permute(0, 2, 3, 1).reshape(b, h * w, c)            # b c h w -> b (h w) c
    mu = t.mean(-1, keepdim=True)
    var = t.var(-1, keepdim=True, unbiased=False)
    t = (t - mu) / torch.sqrt(var + 1e-5) * sd[f"{name}.body.weight"] + sd[f"{name}.body.bias"]
    return t.reshape(b, h, w, c).permute(0, 3, 1, 2)          # b (h w) c -> b c h w


def _heads(x, heads):
    b, c, h, w = x.shape
    return x.reshape(b, heads, c // heads, h * w)


def _attend(q, k, v, temperature):
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    return attn.softmax(dim=-1) @ v


def _mdta(sd, name, x, heads):
    b, c, h, w = x.shape
    q, k, v = _dw(sd, f"{name}.qkv_dwconv", _conv(sd, f"{name}.qkv", x)).chunk(3, dim=1)
    out = _attend(_heads(q, heads), _heads(k, heads), _heads(v, heads), sd[f"{name}.temperature"])
    return _conv(sd, f"{name}.project_out", out.reshape(b, c, h, w))


def _gdfn(sd, name, x):
    x1, x2 = _dw(sd, f"{name}.dwconv", _conv(sd, f"{name}.project_in", x)).chunk(2, dim=1)
    return _conv(sd, f"{name}.project_out", F.gelu(x1) * x2)


def _block(sd, name, x, heads):
    x = x + _mdta(sd, f"{name}.attn", _layer_norm(sd, f"{name}.norm1", x), heads)
    return x + _gdfn(sd, f"{name}.ffn", _layer_norm(sd, f"{name}.norm2", x))


def _afm(sd, x1, x2, heads):
    b, c, h, w = x1.shape
    q1, k1, v1 = _dw(sd, "FM.qkv1_dwconv", _conv(sd, "FM.qkv1", x1)).chunk(3, dim=1)
    q2, k2, v2 = _dw(sd, "FM.qkv2_dwconv", _conv(sd, "FM.qkv2", x2)).chunk(3, dim=1)
    out1 = _attend(_heads(q2, heads), _heads(k1, heads), _heads(v1, heads), sd["FM.temperature1"])
    out2 = _attend(_heads(q1, heads), _heads(k2, heads), _heads(v2, heads), sd["FM.temperature2"])
    x1 = x1 + _conv(sd, "FM.project_mid1", out1.reshape(b, c, h, w))
    x2 = x2 + _conv(sd, "FM.project_mid2", out2.reshape(b, c, h, w))
    out = torch.cat([x1, x2], 1)
    g1, g2 = _dw(sd, "FM.project_E_d", _conv(sd, "FM.project_E", out)).chunk(2, dim=1)
    y1 = F.gelu(g1) * _dw(sd, "FM.project_E1_d", _conv(sd, "FM.project_E1", x1))
    y2 = F.gelu(g2) * _dw(sd, "FM.project_E2_d", _conv(sd, "FM.project_E2", x2))
    return out + _conv(sd, "FM.project_out1", y1) + _conv(sd, "FM.project_out2", y2)


def _count(sd, prefix):
    return len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})


def oracle_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """Released network output for a B×2×H×W input (channel 0 infrared, channel 1 visible)."""
    heads = sd["encoder1.0.attn.temperature"].shape[0]
    x1 = _conv(sd, "project_in_1", x[:, :1], padding=1)
    x2 = _conv(sd, "project_in_2", x[:, 1:], padding=1)
    for i in range(_count(sd, "encoder1")):
        x1 = _block(sd, f"encoder1.{i}", x1, heads)
    for i in range(_count(sd, "encoder2")):
        x2 = _block(sd, f"encoder2.{i}", x2, heads)
    out = _afm(sd, x1, x2, heads)
    for i in range(_count(sd, "decoder")):
        out = _block(sd, f"decoder.{i}", out, heads)
    out = F.leaky_relu(_conv(sd, "project_out_0", out, padding=1))
    return torch.sigmoid(_conv(sd, "project_out_1", out, padding=1))
