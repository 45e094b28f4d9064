"""MDTA (transposed multi-head) attention core in plain PyTorch: the spec for the Triton kernel."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mdta_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             temperature: torch.Tensor) -> torch.Tensor:
    """softmax(norm(q)·norm(k)ᵀ · t) · v over the channel axis.

    q, k, v: B×heads×C×N (C channels per head, N pixels); temperature: one value per head
    (shape heads, heads×1×1 or broadcastable). q and k are L2-normalised along the pixel axis
    (eps 1e-12 as ``F.normalize``), so attention is a C×C matrix per head.
    """
    qn = F.normalize(q, dim=-1)
    kn = F.normalize(k, dim=-1)
    attn = torch.matmul(qn, kn.transpose(-2, -1)) * temperature.reshape(1, -1, 1, 1)
    return torch.matmul(attn.softmax(dim=-1), v)
