"""MDTA attention entry point: Triton on CUDA, the reference elsewhere."""
from __future__ import annotations

import torch

from .dispatch import use_triton
from .mdta_reference import mdta_attention_reference


def mdta_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor,
                   backend: str | None = None) -> torch.Tensor:
    """Attention core of MDTA (see ``mdta_attention_reference``), dispatched by ``backend``."""
    if use_triton(q, k, v, temperature, backend=backend):
        from .mdta_triton import mdta_attention_triton
        return mdta_attention_triton(q, k, v, temperature)
    return mdta_attention_reference(q, k, v, temperature)
