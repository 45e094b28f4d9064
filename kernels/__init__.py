"""Kernel entry points used by the models and the training loop.

Each op has a pure-PyTorch reference (the spec) and, where it pays, a Triton kernel with
autograd through double backward; ``dispatch`` picks one per call.
"""
from .dispatch import BACKENDS, requested_backend, triton_available, use_triton
from .fusion_loss import fusion_loss
from .fusion_loss_reference import fusion_loss_reference, sobel_xy
from .layernorm import layer_norm_channels
from .layernorm_reference import layer_norm_channels_reference
from .mdta import mdta_attention
from .mdta_reference import mdta_attention_reference

__all__ = [
    "BACKENDS", "requested_backend", "triton_available", "use_triton",
    "fusion_loss", "fusion_loss_reference", "sobel_xy",
    "layer_norm_channels", "layer_norm_channels_reference",
    "mdta_attention", "mdta_attention_reference",
]
