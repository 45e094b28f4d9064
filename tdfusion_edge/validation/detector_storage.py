"""How the own detector format stores weights: fp32 as trained, fp16, or int8 weights with a scale per
output channel (about a quarter of fp32; activations and every other tensor stay floating point).

``pack`` turns a state dict into (stored tensors, int8 scales); ``unpack`` checks and reverses it. The
int8 form is weight-only symmetric quantisation: w ≈ q · s, q ∈ [−127, 127], s = max|w| / 127 per
output channel; its accuracy is measured on the model it is used for, not assumed.
"""
from __future__ import annotations

from typing import Mapping

import torch

PRECISIONS = ("fp32", "fp16", "int8")
# tensors quantised to int8: conv / linear weights big enough for the scale to be worth storing
MIN_INT8_NUMEL = 256


def pack(state: Mapping[str, torch.Tensor], precision: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(tensors to store, per-channel scales of the int8 ones) for ``precision`` fp32 / fp16 / int8."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    stored, scales = {}, {}
    for key, value in state.items():
        v = value.detach().cpu()
        if not v.is_floating_point() or precision == "fp32":
            stored[key] = v.clone()
        elif precision == "int8" and v.dim() >= 2 and v.numel() >= MIN_INT8_NUMEL:
            flat = v.float().flatten(1)
            scale = (flat.abs().amax(1) / 127.0).clamp_min(1e-12)
            stored[key] = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8).view_as(v)
            scales[key] = scale
        else:
            stored[key] = v.half()
    return stored, scales


def unpack(stored: Mapping[str, torch.Tensor], scales: object, where: str) -> dict[str, torch.Tensor]:
    """The fp32 state dict of a stored one; a malformed scale table is a ValueError naming the entry."""
    if scales is None:
        scales = {}
    if not isinstance(scales, Mapping):
        raise ValueError(f"{where}: int8_scales is a {type(scales).__name__}, not a mapping")
    out = {}
    for key, value in stored.items():
        if key in scales:
            scale = scales[key]
            if value.dtype != torch.int8:
                raise ValueError(f"{where}: {key!r} has an int8 scale but is stored as {value.dtype}")
            if not isinstance(scale, torch.Tensor) or not scale.is_floating_point() or \
                    tuple(scale.shape) != (value.shape[0],) or not bool(torch.isfinite(scale).all()):
                raise ValueError(f"{where}: the int8 scale of {key!r} is not {value.shape[0]} finite floats")
            out[key] = value.float() * scale.float().view(-1, *([1] * (value.dim() - 1)))
        elif value.dtype == torch.int8:
            raise ValueError(f"{where}: {key!r} is stored as int8 without a scale")
        else:
            out[key] = value
    unknown = next((k for k in scales if k not in stored), None)
    if unknown is not None:
        raise ValueError(f"{where}: int8 scale for unknown key {str(unknown)[:80]!r}")
    return out
