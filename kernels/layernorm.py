"""Channel LayerNorm entry point (reference for now; a fused kernel can plug in here)."""
from __future__ import annotations

import torch

from .layernorm_reference import layer_norm_channels_reference


def layer_norm_channels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the channels of an NCHW tensor (see ``layer_norm_channels_reference``)."""
    return layer_norm_channels_reference(x, weight, bias, eps)
