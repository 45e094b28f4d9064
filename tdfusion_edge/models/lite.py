"""TDFusion-lite: a fusion network designed for cost (≈0.4 GFLOP per 240×320 frame).

All learned work happens at 1/``factor`` resolution: the pair, space-to-depth rearranged, goes
through a few 3×3 convs (one level further down with a global-context term) that predict five
per-pixel coefficients of a *local affine model*

    y = a₀·low(ir) + a₁·low(vis) + a₂·(ir − low(ir)) + a₃·(vis − low(vis)) + a₄

where ``low`` is the block mean upsampled bilinearly. The coefficients are upsampled bilinearly and
applied to the full-resolution inputs, so edges come from the sources themselves (guided-filter style:
smooth weights, sharp output). A small refiner at full resolution (3×3, 1×1, 3×3; 16 channels; it
also sees the upsampled coefficients, i.e. the scene context) adds the fine residual the affine model
cannot express, such as the teacher's own texture in flat regions. Any H×W: the input is padded
(replicate) to a multiple of 2·factor and the output cropped back. See docs/lite.md for the FLOP and latency budget.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import LiteFusionNetConfig

N_COEF = 5  # a0..a4 of the local affine model above


class LiteFusionNet(nn.Module):
    """Fuses IR and visible luminance (each B×1×H×W in [0,1]) into one B×1×H×W image in [0,1]."""

    # Kept float in INT8 models: the head writes the affine coefficients and the context conv reads them;
    # a QDQ pair on either side quantises the coefficients the float affine path uses (−1.3 % VIF on
    # RoadScene when the context conv was quantised). Both run at low resolution or are tiny.
    INT8_FLOAT_WEIGHTS = ("head.weight", "refine_context.weight")

    def __init__(self, config: LiteFusionNetConfig | None = None):
        super().__init__()
        self.config = config = config or LiteFusionNetConfig()
        c, f, r = config.width, config.factor, config.refine
        self.embed = nn.Conv2d(2 * f * f, c, 1)
        self.encode = nn.Conv2d(c, c, 3, padding=1)
        self.context_1 = nn.Conv2d(c, c, 3, padding=1)
        self.context_global = nn.Conv2d(c, c, 1)
        self.context_2 = nn.Conv2d(c, c, 3, padding=1)
        self.decode = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Conv2d(c, N_COEF, 3, padding=1)
        self.refine_in = nn.Conv2d(3, r, 3, padding=1)
        # 1×1: the coefficients are already smooth, so a per-pixel mix is all the context costs.
        self.refine_context = nn.Conv2d(N_COEF, r, 1, bias=False) if config.refine_context else None
        self.refine_mid = nn.ModuleList(nn.Conv2d(r, r, 1) for _ in range(config.refine_hidden))
        self.refine_out = nn.Conv2d(r, 1, 3, padding=1)
        self._init_identity_average()

    def _init_identity_average(self) -> None:
        """Start as the plain average of the sources (a sane fusion) so distillation starts near the target."""
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.copy_(torch.tensor([0.5, 0.5, 0.5, 0.5, 0.0]))
            self.refine_out.weight.zero_()
            self.refine_out.bias.zero_()

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        h, w = ir.shape[-2], ir.shape[-1]
        f = self.config.factor
        m = 2 * f
        x = torch.cat([ir, vis], dim=1)
        # Always pad (possibly by 0) so exported graphs have no shape-dependent branch.
        x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="replicate")
        low = F.avg_pool2d(x, f)
        e = F.relu(self.embed(F.pixel_unshuffle(x, f)))
        e = F.relu(self.encode(e))
        d = F.relu(self.context_1(F.avg_pool2d(e, 2)))
        d = d + self.context_global(d.mean(dim=(2, 3), keepdim=True))  # scene-level brightness/contrast
        d = F.relu(self.context_2(d))
        e = F.relu(self.decode(e + F.interpolate(d, scale_factor=2.0, mode="bilinear", align_corners=False)))
        coef = self.head(e)
        up = F.interpolate(torch.cat([coef, low], dim=1), scale_factor=float(f), mode="bilinear",
                           align_corners=False)
        a, base = up[:, :N_COEF], up[:, N_COEF:]
        detail = x - base
        y = (a[:, 0:1] * base[:, 0:1] + a[:, 1:2] * base[:, 1:2] + a[:, 2:3] * detail[:, 0:1]
             + a[:, 3:4] * detail[:, 1:2] + a[:, 4:5])
        r = self.refine_in(torch.cat([x, y], dim=1))
        if self.refine_context is not None:
            r = r + self.refine_context(a)
        r = F.relu(r)
        for layer in self.refine_mid:
            r = F.relu(layer(r))
        y = y + self.refine_out(r)
        return torch.clamp(y, 0.0, 1.0)[:, :, :h, :w]

    def deploy_module(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        """The module inference runtimes run (ONNX export, torch backend): this network in ``dtype``."""
        return DeployLiteFusionNet(self, dtype)


class DeployLiteFusionNet(nn.Module):
    """A frozen copy of ``LiteFusionNet`` in ``dtype``; inputs and output stay float32 like ``DeployFusionNet``."""

    def __init__(self, net: LiteFusionNet, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = net.config
        self.compute_dtype = dtype
        self.net = LiteFusionNet(net.config)
        self.net.load_state_dict(net.state_dict())
        self.net.to(dtype).eval().requires_grad_(False)
        self.eval()

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        return self.net(ir.to(self.compute_dtype), vis.to(self.compute_dtype)).float()
