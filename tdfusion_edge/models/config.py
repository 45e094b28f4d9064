"""Width / depth / head settings of the fusion network and the loss generator."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TypeVar

_C = TypeVar("_C", bound="DictConfig")


class DictConfig:
    """Mixin of the frozen size dataclasses: to and from the plain dicts stored in checkpoints."""

    def to_dict(self) -> dict:
        """Plain dict for checkpoints and logs."""
        return asdict(self)

    @classmethod
    def from_dict(cls: type[_C], values: dict) -> _C:
        """Build from a dict, rejecting unknown keys with a clear message."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class NetConfig(DictConfig):
    """Restormer-style network size: base width, blocks per stage, heads, FFN expansion, conv bias."""

    dim: int = 16
    num_blocks: int = 2
    heads: int = 8
    ffn_expansion: float = 2.0
    bias: bool = False

    def __post_init__(self) -> None:
        if self.dim % self.heads or (2 * self.dim) % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.num_blocks < 1:
            raise ValueError("num_blocks must be at least 1")


class FusionNetConfig(NetConfig):
    """Size of FusionNet; the defaults are the released ReFusion/TDFusion network."""


class LossGeneratorConfig(NetConfig):
    """Size of the loss generator G; the defaults are the released one."""


# What the refiner fields meant before they existed: the first release's 8-channel two-layer refiner.
LITE_LEGACY_FIELDS = {"refine": 8, "refine_hidden": 0, "refine_context": False}


@dataclass(frozen=True)
class LiteFusionNetConfig(DictConfig):
    """Size of TDFusion-lite: trunk width at 1/``factor`` resolution and the full-resolution refiner.

    ``refine`` is the refiner's width, ``refine_hidden`` the number of 1×1 layers between its two 3×3
    convs, ``refine_context`` whether it also sees the upsampled affine coefficients (scene context).
    Files and states written before the last two existed hold the network of ``LITE_LEGACY_FIELDS``.
    """

    width: int = 32
    factor: int = 4
    refine: int = 16
    refine_hidden: int = 1
    refine_context: bool = True

    def __post_init__(self) -> None:
        if self.width < 4 or self.refine < 1:
            raise ValueError("width must be at least 4 and refine at least 1")
        if self.factor not in (2, 4, 8):
            raise ValueError(f"factor must be 2, 4 or 8, got {self.factor}")
        if not 0 <= self.refine_hidden <= 4:
            raise ValueError(f"refine_hidden must be 0..4, got {self.refine_hidden}")
