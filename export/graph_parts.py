"""Modules that wrap the fusion network for export: pre/post-processing inside the graph, and fusion → YOLOv8.

I/O of the wrapped graph (see docs/export.md):

* ``io="float"``: inputs ``ir``, ``vis`` float32 B×1×H×W in [0,1] (luminance Y / 255);
  output ``fused`` float32 B×1×H×W in [0,1] (``stretch="minmax"`` stretches each image).
* ``io="uint8"``: inputs ``ir`` uint8 B×H×W×1 (gray) or ×3 (BGR) and ``vis`` uint8 B×H×W×3 (BGR) or
  ×1, i.e. OpenCV frames with a batch axis; Y is OpenCV's float YCrCb luma / 255. Outputs ``fused``
  uint8 B×H×W×1 (stretched by default, ×255, rounded) and, when ``vis`` is colour, ``fused_bgr``
  uint8 B×H×W×3: the fused Y with the visible chroma, as ``imaging.compose_output`` makes it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import ExportError

IO_KINDS = ("float", "uint8")
STRETCHES = ("none", "minmax")
# OpenCV's float RGB→YCrCb / YCrCb→RGB coefficients (BGR channel order here).
_Y_BGR = (0.114, 0.587, 0.299)
_CR, _CB = 0.713, 0.564
_R_CR, _G_CR, _G_CB, _B_CB = 1.403, -0.714, -0.344, 1.773


@dataclass(frozen=True)
class GraphOptions:
    """What goes into the exported graph around the network."""

    io: str = "float"
    stretch: str = "none"
    ir_channels: int = 1         # uint8 io only
    vis_channels: int = 3        # uint8 io only

    def __post_init__(self):
        if self.io not in IO_KINDS:
            raise ExportError(f"io must be one of {', '.join(IO_KINDS)}, got {self.io!r}")
        if self.stretch not in STRETCHES:
            raise ExportError(f"stretch must be one of {', '.join(STRETCHES)}, got {self.stretch!r}")
        if self.ir_channels not in (1, 3) or self.vis_channels not in (1, 3):
            raise ExportError("uint8 inputs have 1 (gray) or 3 (BGR) channels")

    @property
    def color_output(self) -> bool:
        """True when the graph also returns the colour composite ``fused_bgr``."""
        return self.io == "uint8" and self.vis_channels == 3

    def input_names(self) -> list[str]:
        return ["ir", "vis"]

    def output_names(self) -> list[str]:
        return ["fused", "fused_bgr"] if self.color_output else ["fused"]

    def tag(self) -> str:
        """Short description used in cache keys."""
        if self.io == "float":
            return f"float-{self.stretch}"
        return f"u8-ir{self.ir_channels}-vis{self.vis_channels}-{self.stretch}"


def bgr_to_luma(frame_u8: torch.Tensor) -> torch.Tensor:
    """uint8 B×H×W×C (C = 1 gray or 3 BGR) → float 0–255 luma B×1×H×W."""
    x = frame_u8.float()
    if x.shape[-1] == 3:
        coeff = torch.tensor(_Y_BGR, dtype=torch.float32).reshape(3, 1)
        x = torch.matmul(x, coeff)
    return x.permute(0, 3, 1, 2)


def stretch_minmax(y: torch.Tensor) -> torch.Tensor:
    """Each image stretched to [0,1] by its own min and max (flat images → 0), as the released inference."""
    lo = torch.amin(y, dim=(1, 2, 3), keepdim=True)
    hi = torch.amax(y, dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (y - lo) / torch.clamp(span, min=1e-12), torch.zeros_like(y))


def to_uint8_image(y01: torch.Tensor) -> torch.Tensor:
    """float B×1×H×W in [0,1] → uint8 B×H×W×1 (×255, rounded half to even as numpy)."""
    return torch.round(torch.clamp(y01, 0.0, 1.0) * 255.0).to(torch.uint8).permute(0, 2, 3, 1)


def _chroma(frame_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV float YCrCb chroma of a BGR uint8 frame on the 8-bit scale (neutral 128): Cr, Cb."""
    x = frame_u8.float()
    b, g, r = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    y = _Y_BGR[0] * b + _Y_BGR[1] * g + _Y_BGR[2] * r
    return (r - y) * _CR + 128.0, (b - y) * _CB + 128.0


def _merge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two chroma planes weighted by their distance from neutral, as ``imaging.merge_chroma``."""
    da, db = torch.abs(a - 128.0), torch.abs(b - 128.0)
    return (a * da + b * db) / (da + db + 1e-4)


def compose_bgr(y8: torch.Tensor, vis_u8: torch.Tensor, ir_u8: torch.Tensor | None = None) -> torch.Tensor:
    """Fused 8-bit Y (B×H×W×1 uint8) + the visible chroma (merged with the IR's if that is BGR too) → BGR uint8."""
    cr, cb = _chroma(vis_u8)
    if ir_u8 is not None and ir_u8.shape[-1] == 3:
        cr_ir, cb_ir = _chroma(ir_u8)
        cr, cb = _merge(cr_ir, cr), _merge(cb_ir, cb)
    dcr, dcb = cr - 128.0, cb - 128.0
    y = y8.float()
    bgr = torch.cat([y + _B_CB * dcb, y + _G_CR * dcr + _G_CB * dcb, y + _R_CR * dcr], dim=-1)
    return torch.round(torch.clamp(bgr, 0.0, 255.0)).to(torch.uint8)


class FusionGraph(nn.Module):
    """The fusion network with the pre/post-processing of ``options`` around it."""

    def __init__(self, net: nn.Module, options: GraphOptions = GraphOptions()):
        super().__init__()
        self.net = net
        self.options = options

    def forward(self, ir: torch.Tensor, vis: torch.Tensor):
        opts = self.options
        if opts.io == "uint8":
            fused = self.net(bgr_to_luma(ir) / 255.0, bgr_to_luma(vis) / 255.0)
        else:
            fused = self.net(ir, vis)
        if opts.stretch == "minmax":
            fused = stretch_minmax(fused)
        if opts.io == "float":
            return fused
        y8 = to_uint8_image(fused)
        return (y8, compose_bgr(y8, vis, ir)) if opts.color_output else y8


class FusionDetectionGraph(nn.Module):
    """Fusion → YOLOv8 in one graph: outputs the fusion outputs plus ``detections`` B×(4+nc)×A.

    YOLO sees the colour composite (RGB, /255) when the graph has one, else the fused Y on three
    channels — the image the app shows and detects on.
    """

    def __init__(self, fusion: FusionGraph, detector: nn.Module):
        super().__init__()
        self.fusion = fusion
        self.detector = detector

    def forward(self, ir: torch.Tensor, vis: torch.Tensor):
        out = self.fusion(ir, vis)
        opts = self.fusion.options
        if opts.color_output:
            image = out[1].flip(-1).permute(0, 3, 1, 2).float() / 255.0
        elif opts.io == "uint8":
            image = out.permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1) / 255.0
        else:
            image = out.expand(-1, 3, -1, -1)
        det = self.detector(image)
        return (*out, det) if isinstance(out, tuple) else (out, det)


def prepare_yolo_for_export(model: nn.Module) -> nn.Module:
    """An ultralytics DetectionModel in export mode: BN fused, eval, head returning one B×(4+nc)×A tensor."""
    try:
        from ultralytics.nn.modules import Detect
    except ImportError:
        raise ExportError("--det needs the ultralytics package (pip install ultralytics)") from None
    model = copy.deepcopy(model).float().eval()   # fusing and halving must not touch the caller's model
    try:
        model = model.fuse(verbose=False)
    except TypeError:  # older ultralytics has fuse() without verbose
        model = model.fuse()
    for module in model.modules():
        if isinstance(module, Detect):
            module.export = True
            module.format = "onnx"
            module.dynamic = False
    return model.requires_grad_(False)


def load_detector(spec: str) -> nn.Module:
    """YOLOv8 from a local ``.pt``, this project's detector format, or a model yaml (``yolov8n.yaml``).

    Never downloads and never runs code from the file: see ``tdfusion_edge.validation.detector``.
    """
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        raise ExportError("--det needs the ultralytics package (pip install ultralytics)") from None
    from tdfusion_edge.validation.detector import DetectorError, check_detector_spec, load_detector_model

    try:
        checked = check_detector_spec(spec, deep=False)
        if checked.kind in ("yaml", "torch"):
            return load_detector_model(checked)
    except DetectorError as exc:  # same message, in the export layer's error type
        raise ExportError(str(exc)) from None
    raise ExportError(f"--det {spec}: export puts a PyTorch YOLO in the graph; give a .pt, a converted "
                      f"detector or a model yaml (an .onnx/.engine detector cannot be merged)")
