"""TensorRT engine builds from the exported ONNX: FP32, FP16 (FP32 reductions kept), INT8 (calibrated, gated).

One static-shape engine per camera resolution. FP16 and INT8 engines are built from the half ONNX
graph, whose reductions sit in FP32 Cast islands: with TensorRT ≥ 9 an FP16 build uses a strongly
typed network (types exactly as in the ONNX); otherwise every layer that computes in FP32 in the
graph is pinned to FP32 with ``OBEY_PRECISION_CONSTRAINTS``. Argument checks, shape plans and the
equivalent ``trtexec`` command need no TensorRT; building does.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine_cache import PRECISIONS, CacheKey, cache_root, model_hash, produce_once
from .errors import ExportError
from .graph_parts import GraphOptions
from .quality_gate import DEFAULT_MIN_PSNR_DB, QualityReport, measure_quality
from .trt_import import require_tensorrt

log = logging.getLogger(__name__)
MAX_WORKSPACE_GB = 64.0


@dataclass(frozen=True)
class EngineOptions:
    """What to build: shape (H, W), batch, precision, workspace, INT8 calibration and its quality gate."""

    shape: tuple[int, int]
    precision: str = "fp16"
    batch: int = 1
    workspace_gb: float = 2.0
    calib_dir: str | None = None
    calib_batches: int = 64
    gate_pairs: int = 4
    min_int8_psnr: float = DEFAULT_MIN_PSNR_DB
    graph: GraphOptions = field(default_factory=GraphOptions)

    def validate(self) -> "EngineOptions":
        """Raise ExportError (one line) on an impossible combination; return self."""
        if self.precision not in PRECISIONS:
            raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if len(self.shape) != 2 or min(self.shape) < 8:
            raise ExportError(f"engine shape must be (H, W) with sizes ≥ 8, got {tuple(self.shape)}")
        if self.batch < 1:
            raise ExportError(f"batch must be positive, got {self.batch}")
        if not 0 < self.workspace_gb <= MAX_WORKSPACE_GB:
            raise ExportError(f"workspace must be in (0, {MAX_WORKSPACE_GB:g}] GiB, got {self.workspace_gb}")
        if self.precision == "int8":
            if not self.calib_dir:
                raise ExportError("--int8 needs --calib DIR (a folder with ir/ and vi/ pairs)")
            if not Path(self.calib_dir).is_dir():
                raise ExportError(f"calibration folder not found: {self.calib_dir}")
            if self.calib_batches < 1 or self.gate_pairs < 1:
                raise ExportError("calibration needs at least one batch and one gate pair")
        elif self.calib_dir:
            raise ExportError("--calib is only used with --int8")
        return self

    @property
    def onnx_precision(self) -> str:
        """Precision of the ONNX graph the engine is built from (INT8 layers start from the half graph)."""
        return "fp32" if self.precision == "fp32" else "fp16"


def shape_plan(graph: GraphOptions, shape: tuple[int, int], batch: int = 1,
               max_batch: int | None = None) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Optimisation profile per input: (min, opt, max) dims; H×W fixed, batch from 1 to ``max_batch``."""
    h, w = shape
    top = max(batch, max_batch or batch)
    low = 1 if max_batch else batch

    def dims(b: int, channels: int) -> tuple[int, ...]:
        return (b, 1, h, w) if graph.io == "float" else (b, h, w, channels)

    plan = {}
    for name, ch in (("ir", graph.ir_channels), ("vis", graph.vis_channels)):
        plan[name] = (dims(low, ch), dims(batch, ch), dims(top, ch))
    return plan


def trtexec_command(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, opts: EngineOptions,
                    strongly_typed: bool = True) -> list[str]:
    """The ``trtexec`` line that builds the same engine (for Jetson or a machine without this package)."""
    opts.validate()
    fmt = lambda d: "x".join(map(str, d))  # noqa: E731
    plan = shape_plan(opts.graph, opts.shape, opts.batch)
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
           f"--memPoolSize=workspace:{int(opts.workspace_gb * 1024)}M",
           "--shapes=" + ",".join(f"{n}:{fmt(p[1])}" for n, p in plan.items())]
    if opts.precision == "fp16":
        cmd += ["--stronglyTyped"] if strongly_typed else ["--fp16", "--precisionConstraints=obey"]
    elif opts.precision == "int8":
        cmd += ["--fp16", "--int8", f"--calib={Path(engine_path).with_suffix('.calib')}", "--precisionConstraints=obey"]
    return cmd


def device_tag(device_index: int = 0) -> str:
    """GPU name and compute capability (engines are specific to both), e.g. 'NVIDIA Orin sm87'."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device_index)
            return f"{torch.cuda.get_device_name(device_index)} sm{major}{minor}"
    except ImportError:
        pass
    try:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        dev = cuda.Device(device_index)
        major, minor = dev.compute_capability()
        return f"{dev.name()} sm{major}{minor}"
    except ImportError:
        from .errors import TensorRTUnavailable
        raise TensorRTUnavailable("no CUDA device found (neither torch.cuda nor pycuda is usable)") from None


def fp32_node_names(onnx_path: str | os.PathLike) -> set[str]:
    """Names of the ONNX nodes whose outputs are all float32: the FP32 islands of a half graph."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)}
    fp32 = onnx.TensorProto.FLOAT
    return {n.name for n in model.graph.node
            if n.name and n.output and all(types.get(o) == fp32 for o in n.output)}


def pin_fp32_layers(network, trt, island_names: set[str] | None = None) -> int:
    """Constrain the layers of the FP32 islands to FP32; returns how many were pinned.

    A layer belongs to an island when its name is (or starts with) the name of an FP32 ONNX node,
    or — without names, or when no name matches — when all its outputs are typed float32 in the
    parsed network.
    """
    layers = [network.get_layer(i) for i in range(network.num_layers)]

    def by_name(layer) -> bool:
        name = getattr(layer, "name", "") or ""
        return name in island_names or any(name.startswith(n + "_") or name.startswith(n + " ") for n in island_names)

    def by_type(layer) -> bool:
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        return bool(outs) and all(o.dtype == trt.float32 for o in outs)

    rule = by_name if island_names and any(by_name(layer) for layer in layers) else by_type
    pinned = 0
    for layer in layers:
        if rule(layer):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    if layers and pinned > 0.9 * len(layers):
        log.warning("pinned %d of %d layers to FP32: little will run in FP16 (TensorRT ≥ 9 builds strongly typed)",
                    pinned, len(layers))
    return pinned


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, opts: EngineOptions,
                 calibrator=None) -> Path:
    """Parse ``onnx_path`` and write a serialized engine to ``engine_path``."""
    opts.validate()
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = trt.NetworkDefinitionCreationFlag
    strongly = opts.precision == "fp16" and hasattr(flag, "STRONGLY_TYPED")
    flags = 1 << int(flag.EXPLICIT_BATCH) if hasattr(flag, "EXPLICIT_BATCH") else 0
    if strongly:
        flags |= 1 << int(flag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * 2**30))
    if not strongly and opts.precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log.info("pinned %d FP32 layers", pin_fp32_layers(network, trt, fp32_node_names(onnx_path)))
    if opts.precision == "int8":
        if calibrator is None:
            raise ExportError("an INT8 build needs a calibrator")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        plan = shape_plan(opts.graph, opts.shape, opts.batch)
        for tensor in dynamic:
            if tensor.name not in plan:
                raise ExportError(f"no shape plan for dynamic input {tensor.name!r}")
            profile.set_shape(tensor.name, *plan[tensor.name])
        config.add_optimization_profile(profile)
        if opts.precision == "int8":
            config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT engine build failed (see the TensorRT messages above)")
    from tdfusion_edge.validation.output_path import atomic_write_bytes

    return atomic_write_bytes(Path(engine_path), bytes(serialized))  # complete engine or none


def _reference_outputs(net, graph: GraphOptions, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """FP32 PyTorch outputs (first graph output, scaled to [0,1]) for the gate."""
    import torch

    from .deploy_net import deploy_module
    from .graph_parts import FusionGraph

    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = FusionGraph(deploy_module(net), graph).to(device).eval()
    outs = []
    with torch.inference_mode():
        for feed in feeds:
            out = module(*(torch.from_numpy(feed[n]).to(device) for n in graph.input_names()))
            out = out[0] if isinstance(out, tuple) else out
            outs.append(_unit(out.float().cpu().numpy(), graph))
    return outs


def _unit(array: np.ndarray, graph: GraphOptions) -> np.ndarray:
    return array.astype(np.float32) / 255.0 if graph.io == "uint8" else array.astype(np.float32)


def gate_int8_engine(engine_path: Path, net, opts: EngineOptions) -> QualityReport:
    """Run the INT8 engine and FP32 PyTorch on the last ``gate_pairs`` calibration pairs; compare."""
    from .calibration import CalibrationBatches
    from .tensorrt_runtime import TensorRTEngine

    pairs = CalibrationBatches(opts.calib_dir, opts.shape, 1, opts.graph)
    indices = range(max(0, len(pairs.pairs) - opts.gate_pairs), len(pairs.pairs))
    feeds = [{k: np.repeat(v, opts.batch, axis=0) for k, v in pairs.sample(i).items()} for i in indices]
    engine = TensorRTEngine(engine_path)
    try:
        got = [_unit(engine.run(feed)["fused"], opts.graph) for feed in feeds]
    finally:
        engine.close()
    return measure_quality(_reference_outputs(net, opts.graph, feeds), got, opts.min_int8_psnr)


def engine_key(net, opts: EngineOptions, device_index: int = 0) -> CacheKey:
    """Cache key of the engine for ``net`` under ``opts`` on this GPU and TensorRT version."""
    trt = require_tensorrt()
    return CacheKey(model_hash(net), opts.precision, tuple(opts.shape), opts.batch, opts.graph.tag(),
                    device=device_tag(device_index), runtime=trt.__version__)


def build_engine_cached(net, opts: EngineOptions, cache_dir: str | os.PathLike | None = None,
                        device_index: int = 0) -> tuple[Path, bool, QualityReport | None]:
    """The engine for ``net`` under ``opts``, built once and reused: (path, built now?, INT8 report)."""
    from .calibration import CalibrationBatches, make_entropy_calibrator
    from .onnx_export import export_fusion_onnx

    opts.validate()
    key = engine_key(net, opts, device_index)
    root = cache_root(cache_dir)
    onnx_key = CacheKey(key.model_hash, opts.onnx_precision, key.shape, key.batch, key.options)
    onnx_path, _ = produce_once(onnx_key.onnx_path(root), lambda tmp: export_fusion_onnx(
        net, tmp, key.shape, opts.batch, opts.onnx_precision, opts.graph))
    engine_path = key.engine_path(root)
    calibrator = None
    if opts.precision == "int8":
        batches = CalibrationBatches(opts.calib_dir, opts.shape, opts.batch, opts.graph,
                                     max_batches=opts.calib_batches)
        calibrator = make_entropy_calibrator(batches, engine_path.with_suffix(".calib"))
    engine_path, built = produce_once(engine_path, lambda tmp: build_engine(onnx_path, tmp, opts, calibrator))
    report = None
    if opts.precision == "int8":
        report = gate_int8_engine(engine_path, net, opts)
        if not report.passed:
            engine_path.unlink(missing_ok=True)
            raise ExportError(report.describe() + "; use FP16 (--half) or lower --int8-min-psnr")
    return engine_path, built, report
