"""LayerNorm over the channel axis of an NCHW tensor in plain PyTorch."""
from __future__ import annotations

import torch


def layer_norm_channels_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                  eps: float = 1e-5) -> torch.Tensor:
    """Normalise each pixel's channel vector (biased variance), then scale and shift per channel."""
    mu = x.mean(dim=1, keepdim=True)
    var = (x - mu).pow(2).mean(dim=1, keepdim=True)
    return (x - mu) * torch.rsqrt(var + eps) * weight.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)
