"""ONNX export of the fusion network (optionally with pre/post-processing and a YOLOv8 detector).

The exported graph is ``DeployFusionNet`` (same maths as ``FusionNet``, arranged for runtimes) at
opset ≥ 17, traced with ``torch.onnx.export(dynamo=True)``; inputs ``ir`` and ``vis`` are separate
tensors (see docs/export.md for the full I/O contract). ``precision="fp16"`` exports FP16
convolutions with FP32 reductions (Cast islands) for FP16/INT8 TensorRT engines.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tdfusion_edge.models import FusionNet

from .deploy_net import deploy_module
from .errors import ExportError
from .graph_parts import FusionDetectionGraph, FusionGraph, GraphOptions, prepare_yolo_for_export

MIN_OPSET = 17
DEFAULT_OPSET = 17
TRACE_SHAPE = (64, 96)      # dynamic exports are traced at this size (small: tracing is not free)
YOLO_STRIDE = 32
log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What an export wrote and how it was checked."""

    path: Path
    precision: str
    shape: tuple[int, int] | None
    batch: int | None
    options: GraphOptions
    opset: int
    inputs: list[str]
    outputs: list[str]
    detector: bool = False
    seconds: float = 0.0
    parity: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: file, opset, precision, shape, I/O names."""
        shape = "dynamic H×W" if self.shape is None else f"{self.shape[0]}×{self.shape[1]}"
        batch = "dynamic batch" if self.batch is None else f"batch {self.batch}"
        det = " + YOLOv8" if self.detector else ""
        return (f"{self.path} (ONNX opset {self.opset}, {self.precision}{det}, {shape}, {batch}, io {self.options.io}, "
                f"inputs {', '.join(self.inputs)} → outputs {', '.join(self.outputs)})")


def check_imgsz(imgsz: tuple[int, int] | None, detector: bool = False) -> tuple[int, int] | None:
    """Validate an (H, W) export size; the detector needs multiples of its stride 32."""
    if imgsz is None:
        if detector:
            raise ExportError("fusion → YOLO export needs a fixed --imgsz H W (multiples of 32)")
        return None
    if len(imgsz) != 2:
        raise ExportError(f"--imgsz takes two numbers, H and W; got {list(imgsz)}")
    h, w = int(imgsz[0]), int(imgsz[1])
    if h < 8 or w < 8:
        raise ExportError(f"--imgsz {h} {w} is too small (at least 8×8)")
    if detector and (h % YOLO_STRIDE or w % YOLO_STRIDE):
        raise ExportError(f"--imgsz {h} {w}: with --det both sizes must be multiples of {YOLO_STRIDE}")
    return h, w


def build_export_module(net: FusionNet, precision: str = "fp32", options: GraphOptions = GraphOptions(),
                        detector: nn.Module | None = None) -> nn.Module:
    """The module that is traced: DeployFusionNet in ``precision`` wrapped with ``options`` (and YOLO)."""
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"ONNX precision must be fp32 or fp16 (INT8 is a TensorRT build option), got {precision!r}")
    dtype = torch.float16 if precision == "fp16" else torch.float32
    graph = FusionGraph(deploy_module(net, dtype=dtype), options)
    if detector is not None:
        det = prepare_yolo_for_export(detector)
        if precision == "fp16":
            det = det.half()
            graph = FusionDetectionGraph(graph, _HalfDetector(det))
        else:
            graph = FusionDetectionGraph(graph, det)
    return graph.eval()


def build_reference_module(net: FusionNet, options: GraphOptions = GraphOptions(),
                           detector: nn.Module | None = None) -> nn.Module:
    """What parity is measured against: the original ``FusionNet`` in FP32 with the same wrapping."""
    graph = FusionGraph(net.float().eval(), options)
    if detector is not None:
        graph = FusionDetectionGraph(graph, prepare_yolo_for_export(detector))
    return graph.eval()


class _HalfDetector(nn.Module):
    """Runs a half detector on float32 input and returns float32 (graph I/O stays float32)."""

    def __init__(self, det: nn.Module):
        super().__init__()
        self.det = det

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.det(x.half()).float()


def example_inputs(options: GraphOptions, shape: tuple[int, int], batch: int = 1,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the graph's input kind (float B×1×H×W in [0,1] or uint8 B×H×W×C frames)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = shape
    if options.io == "float":
        return tuple(torch.rand(batch, 1, h, w, generator=gen) for _ in range(2))
    return (torch.randint(0, 256, (batch, h, w, options.ir_channels), generator=gen, dtype=torch.uint8),
            torch.randint(0, 256, (batch, h, w, options.vis_channels), generator=gen, dtype=torch.uint8))


def _dynamic_shapes(options: GraphOptions, dynamic_hw: bool, dynamic_batch: bool) -> dict | None:
    if not (dynamic_hw or dynamic_batch):
        return None
    dim = torch.export.Dim
    spatial = (2, 3) if options.io == "float" else (1, 2)
    names = ("height", "width")
    axes = {}
    if dynamic_batch:
        axes[0] = dim("batch", min=1, max=256)
    if dynamic_hw:
        for ax, name in zip(spatial, names):
            axes[ax] = dim(name, min=8, max=8192)
    return {"ir": dict(axes), "vis": dict(axes)}


@contextlib.contextmanager
def _quiet_loggers():
    """The exporter's passes log every rewrite at INFO (and the opset down-conversion at WARNING)."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_module_onnx(module: nn.Module, path: str | os.PathLike, options: GraphOptions, output_names: list[str],
                       shape: tuple[int, int] | None, batch: int | None, opset: int = DEFAULT_OPSET) -> Path:
    """Trace ``module`` to an ONNX file (shape/batch None = dynamic axis)."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset must be at least {MIN_OPSET}, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch.export specialises size-1 axes, so a dynamic batch is traced with 2.
    inputs = example_inputs(options, shape or TRACE_SHAPE, batch or 2)
    dynamic = _dynamic_shapes(options, shape is None, batch is None)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), _quiet_loggers(), \
            torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, inputs, input_names=options.input_names(), output_names=output_names,
                                        opset_version=opset, dynamo=True, dynamic_shapes=dynamic)
        except Exception as exc:  # the exporter raises many kinds; all mean "this graph did not export"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"ONNX export failed: {first[:300]}") from exc
        program.save(str(path), external_data=False)
    log.debug("exporter output: %s", sink.getvalue())
    if opset < 18:
        _fix_split_num_outputs(path)
    return path


def _fix_split_num_outputs(path: Path) -> None:
    """Rewrite opset-18 ``Split(num_outputs=n)`` left by the down-conversion into opset-13 ``Split(x, sizes)``.

    The dynamo exporter writes opset 18 and converts down; the converter keeps ``num_outputs`` (from
    ``chunk``, e.g. in YOLOv8's C2f), which opset 17 does not know.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    splits = [n for n in model.graph.node if n.op_type == "Split" and any(a.name == "num_outputs" for a in n.attribute)]
    if not splits:
        return
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    for i, node in enumerate(splits):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n, axis = int(attrs["num_outputs"]), int(attrs.get("axis", 0))
        shape = dims.get(node.input[0])
        size = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
        if not size:
            raise ExportError(f"cannot convert Split {node.name} to opset {model.opset_import[0].version} "
                              f"(unknown size); export with --opset 18")
        chunk = -(-size // n)                       # ONNX: equal chunks, the last one may be smaller
        sizes = [chunk] * (n - 1) + [size - chunk * (n - 1)]
        name = f"{node.name or 'split'}_sizes_{i}"
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(sizes, dtype=np.int64), name))
        kept = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(kept)
        if len(node.input) < 2:
            node.input.append(name)
        else:
            node.input[1] = name
    onnx.save(model, str(path))


def _export_checked_atomically(module, path: Path, options, outputs, shape, batch, opset, check) -> None:
    """Export and check into a temporary file beside ``path``, then rename: a failed or killed export
    never leaves a truncated or unchecked .onnx under the final name."""
    import tempfile

    from tdfusion_edge.validation.output_path import FILE_MODE, OutputPathError, os_reason

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {os_reason(exc)}") from None
    try:
        export_module_onnx(module, tmp, options, outputs, shape, batch, opset)
        try:
            check(tmp)
        except ExportError as exc:  # name the file the user asked for, not the temporary one
            raise ExportError(str(exc).replace(tmp, str(path))) from None
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {os_reason(exc)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_fusion_onnx(net: FusionNet, path: str | os.PathLike, imgsz: tuple[int, int] | None = None,
                       batch: int | None = 1, precision: str = "fp32", options: GraphOptions = GraphOptions(),
                       detector: nn.Module | None = None, opset: int = DEFAULT_OPSET) -> ExportResult:
    """Export ``net`` (with ``options`` and an optional YOLO ``detector``) to ``path`` and run ``onnx.checker``."""
    from .onnx_check import check_onnx

    shape = check_imgsz(imgsz, detector is not None)
    if detector is not None and batch is None:
        raise ExportError("fusion → YOLO export needs a fixed batch size")
    start = time.perf_counter()
    module = build_export_module(net, precision, options, detector)
    outputs = options.output_names() + (["detections"] if detector is not None else [])
    _export_checked_atomically(module, Path(path), options, outputs, shape, batch, opset, check_onnx)
    return ExportResult(path=Path(path), precision=precision, shape=shape, batch=batch, options=options, opset=opset,
                        inputs=options.input_names(), outputs=outputs, detector=detector is not None,
                        seconds=time.perf_counter() - start)
