"""Channel LayerNorm entry point: Triton on CUDA, the reference elsewhere."""
from __future__ import annotations

import torch

from .dispatch import use_triton
from .layernorm_reference import layer_norm_channels_reference


def layer_norm_channels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        eps: float = 1e-5, backend: str | None = None) -> torch.Tensor:
    """LayerNorm over the channels of an NCHW tensor (see ``layer_norm_channels_reference``)."""
    if use_triton(x, weight, bias, backend=backend):
        from .layernorm_triton import layer_norm_channels_triton
        return layer_norm_channels_triton(x, weight, bias, eps)
    return layer_norm_channels_reference(x, weight, bias, eps)
