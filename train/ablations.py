"""The paper's ablations (Table 3) as switches read by the meta step, the fusion phase and the trainer.

I   ``fixed_w``          w_ir = w_vis = ½ everywhere: no G, so no meta phase.
II  ``no_grad_loss``     α = 0: the fusion loss is its intensity term only.
III ``task_drives_f``    in the fusion phase F is trained on L_f + L_t (L_t back-propagated through T into F).
IV  ``no_fusion_phase``  no separate fusion phase: after each outer update of G, F and T take their
                         ordinary step on the meta-training batch (F with the just-updated G).
V   ``weighted_average`` the fused image is I_f = w_ir·I_ir + w_vis·I_vis with w from G; there is no
                         fusion network and no meta phase, G is trained directly by the task loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn

from .config import ABLATIONS

FIXED_W = 0.5


@dataclass(frozen=True)
class Ablations:
    """Which of Table 3's changes are on; all off is the method itself."""

    fixed_w: bool = False
    no_grad_loss: bool = False
    task_drives_f: bool = False
    no_fusion_phase: bool = False
    weighted_average: bool = False

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "Ablations":
        """From the config's list of names (already validated against ABLATIONS)."""
        names = set(names)
        unknown = names - set(ABLATIONS)
        if unknown:
            raise ValueError(f"unknown ablation(s): {', '.join(sorted(unknown))}")
        return cls(**{n: True for n in names})

    @property
    def meta_phase(self) -> bool:
        """Whether G is meta-learned at all (I has no G, V trains G directly)."""
        return not (self.fixed_w or self.weighted_average)

    @property
    def fusion_phase(self) -> bool:
        """Whether each epoch ends with a separate pass training F and T."""
        return not self.no_fusion_phase

    @property
    def uses_generator(self) -> bool:
        """Whether G exists in the run (everything but I)."""
        return not self.fixed_w

    def names(self) -> list[str]:
        """The switches that are on, by name."""
        return [n for n in ABLATIONS if getattr(self, n)]


class WeightedAverageFusion(nn.Module):
    """Ablation V's fusion 'network': the per-pixel average of the sources weighted by G's output."""

    def __init__(self, loss_generator: nn.Module):
        super().__init__()
        self.loss_generator = loss_generator

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        w_ir = self.loss_generator(ir, vis)[:, :1]
        return w_ir * ir + (1.0 - w_ir) * vis
