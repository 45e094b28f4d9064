"""Static INT8 ONNX (QDQ) for onnxruntime on the CPU: calibrated on real pairs, numerically fragile
ops kept in float, gated against FP32, cached by model hash + shape.

Works on any fusion ONNX with inputs ``ir``/``vis`` (B×1×H×W float in [0,1]) and one output.

What stays in float, and why (measured on the released weights at 240×320, docs/export.md):

* every MatMul: in ``DeployFusionNet`` they are the LayerNorm statistics (mean of x and x² over
  channels) and the Gram matrices over all pixels that give q·kᵀ and the L2 norms; quantising them
  (op types Conv + MatMul) drops the output to ~14 dB PSNR against FP32.
* Sqrt, Reciprocal, Div, Clip, Softmax, Reduce*, Sigmoid and every node that consumes their result
  (the per-pixel ``x · 1/σ`` of LayerNorm, the temperature scaling before the softmax): 1/σ spans
  orders of magnitude across pixels, which one uint8 scale cannot hold.
* the output Sigmoid and the conv feeding it (16→1 channels: negligible cost): otherwise the logits
  would be rounded to 256 levels right before the output.

Weights are int8 per output channel, activations uint8 (U8S8: the VNNI ``vpdpbusd`` form).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .engine_cache import cache_root, produce_once
from .errors import ExportError
from .quality_gate import QualityReport, measure_quality

log = logging.getLogger(__name__)

QUANT_VERSION = "qdq-v1"     # bump when the quantisation recipe changes (cached models are then rebuilt)
# Ops whose result is a statistic (norms, variances, attention scores): kept in float.
STAT_OPS = frozenset({"MatMul", "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "Softmax", "Sqrt",
                      "Reciprocal", "Div", "Pow", "Clip", "Sigmoid", "Gemm"})
# Ops that move data without arithmetic: a statistic stays a statistic through them.
PASS_OPS = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Transpose", "Slice", "Flatten", "Identity", "Expand"})
DEFAULT_OP_TYPES = ("Conv",)
DEFAULT_MIN_PSNR_DB = 35.0   # worst held-out pair, on the min/max-stretched output the app shows
DEFAULT_MAX_ABS = 0.1        # no pixel off by more than ~25 grey levels after the stretch


class Int8Rejected(ExportError):
    """The quantised model drifts from FP32 past the gate's bound."""


@dataclass(frozen=True)
class Int8Options:
    """The quantisation recipe and its gate."""

    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    calib_count: int = 16        # calibration pairs
    gate_count: int = 4          # held-out pairs (disjoint from calibration) for the gate
    min_psnr_db: float = DEFAULT_MIN_PSNR_DB
    max_abs: float | None = DEFAULT_MAX_ABS
    stretch: bool = True         # gate on the released inference's min/max-stretched output
    extra_exclude: tuple[str, ...] = field(default_factory=tuple)
    # Convs whose weight tensor's name ends with one of these stay float (the network says which, see
    # ``LiteFusionNet.INT8_FLOAT_WEIGHTS``): node names change across exports, parameter names do not.
    float_weights: tuple[str, ...] = field(default_factory=tuple)

    def tag(self) -> str:
        """What shapes the quantised file (not the gate bounds: a record is re-judged against new ones)."""
        ops = "+".join(sorted(self.op_types)).lower()
        # which nodes, not how many: two exclusion lists of one length are two different models
        kept = sorted(self.extra_exclude) + [f"w:{w}" for w in sorted(self.float_weights)]
        excl = f"-x{len(kept)}-" + hashlib.sha256("\n".join(kept).encode()).hexdigest()[:8] if kept else ""
        return f"{QUANT_VERSION}-{ops}-c{self.calib_count}-g{self.gate_count}{excl}"


def fragile_nodes(model) -> list[str]:
    """Names of nodes to keep in float: statistic ops, and nodes consuming a statistic (through reshapes)."""
    stat_tensors: set[str] = set()
    names = []
    producer = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type == "Sigmoid" and node.input[0] in producer:
            names.append(producer[node.input[0]].name)     # the output logits stay float
    for node in model.graph.node:             # graph order is topological
        from_stat = any(i in stat_tensors for i in node.input)
        if node.op_type in STAT_OPS or (from_stat and node.op_type in PASS_OPS):
            names.append(node.name)
            stat_tensors.update(node.output)   # a reshaped statistic is still a statistic
        elif from_stat and node.op_type != "Conv":
            names.append(node.name)            # arithmetic on a statistic (x · 1/σ): float; its output is an activation
    return names


def float_weight_convs(model, weight_suffixes: Sequence[str]) -> list[str]:
    """Names of the Conv nodes whose weight initializer's name ends with one of ``weight_suffixes``."""
    if not weight_suffixes:
        return []
    return [node.name for node in model.graph.node if node.op_type == "Conv" and len(node.input) > 1
            and node.input[1].endswith(tuple(weight_suffixes))]


def quantize_onnx(fp32_path: str | os.PathLike, out_path: str | os.PathLike,
                  feeds: Callable[[], object], opts: Int8Options = Int8Options()) -> Path:
    """Quantise ``fp32_path`` to a QDQ model at ``out_path``; ``feeds()`` returns a CalibrationDataReader."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    try:
        # Shape inference + ORT's own graph clean-up first, as onnxruntime recommends for quantisation.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        graph = onnx.load(str(pre))
        exclude = sorted(set(fragile_nodes(graph)) | set(opts.extra_exclude)
                         | set(float_weight_convs(graph, opts.float_weights)))
        quantize_static(str(pre), str(out_path), feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(opts.op_types), nodes_to_exclude=exclude)
    finally:
        for leftover in (pre, Path("augmented_model.onnx")):
            if leftover.exists() and leftover != out_path:
                leftover.unlink()
    return out_path


def count_quant_nodes(path: str | os.PathLike) -> dict[str, int]:
    """QuantizeLinear / DequantizeLinear counts of an ONNX file (0 in a float model)."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}


def stretch_minmax(a: np.ndarray) -> np.ndarray:
    """Per-image min/max stretch to [0,1] (the released inference's output step)."""
    a = np.asarray(a, np.float64)
    lo, hi = a.min(axis=(-2, -1), keepdims=True), a.max(axis=(-2, -1), keepdims=True)
    return (a - lo) / np.maximum(hi - lo, 1e-12)


def gate_int8(fp32_session, int8_session, held_out: Sequence[dict[str, np.ndarray]],
              opts: Int8Options = Int8Options()) -> QualityReport:
    """INT8 vs FP32 outputs on held-out inputs (optionally min/max-stretched), judged by ``opts``' bounds."""
    post = stretch_minmax if opts.stretch else (lambda a: np.asarray(a, np.float64))
    refs = [post(fp32_session.run(None, feed)[0]) for feed in held_out]
    got = [post(int8_session.run(None, feed)[0]) for feed in held_out]
    label = "ONNX INT8 vs FP32" + (" (stretched)" if opts.stretch else "")
    return measure_quality(refs, got, opts.min_psnr_db, opts.max_abs, label=label)


@dataclass
class Int8Model:
    """A cached quantised model and its gate record."""

    path: Path
    report: QualityReport
    created: bool
    seconds: float = 0.0

    def require_passed(self) -> "Int8Model":
        """Raise one line when the gate refused this model."""
        if not self.report.passed:
            raise Int8Rejected(f"INT8 model refused: {self.report.describe()}; use FP32 "
                               f"(--backend onnxruntime) or loosen the bound")
        return self


def int8_paths(root: Path, model_id: str, shape: tuple[int, int], opts: Int8Options, calib_id: str) -> tuple[Path, Path]:
    """Where the quantised model of (model, shape, recipe, calibration set) and its gate record live."""
    stem = f"fusion-{model_id[:16]}-{shape[0]}x{shape[1]}-b1-{opts.tag()}-cal{calib_id}-int8"
    return root / "int8" / f"{stem}.onnx", root / "int8" / f"{stem}.gate.json"


def build_int8_cached(fp32_path: Callable[[], Path], model_id: str, shape: tuple[int, int],
                      calib: str | os.PathLike | Sequence | None, opts: Int8Options = Int8Options(),
                      cache_dir: str | os.PathLike | None = None, threads: int | None = None) -> Int8Model:
    """The quantised model for (model, shape), built once: calibrate on real pairs, gate on held-out ones.

    ``fp32_path()`` produces the static-shape FP32 ONNX (only called when a build is needed).
    ``calib`` may be None when a cached model exists. The gate record is cached next to the model
    and re-judged against ``opts``' bounds on every call.
    """
    from .int8_calib import FeedReader, PairSamples, split_indices
    from .onnx_check import ort_session

    root = cache_root(cache_dir)
    samples = PairSamples(calib) if calib is not None else None
    calib_id = samples.identity() if samples is not None else _only_cached_calib(root, model_id, shape, opts)
    model_path, gate_path = int8_paths(root, model_id, shape, opts, calib_id)
    if model_path.is_file() and gate_path.is_file():
        record = json.loads(gate_path.read_text())
        report = QualityReport(**{k: record[k] for k in _record_fields()}).with_bounds(opts.min_psnr_db, opts.max_abs)
        log.info("reusing INT8 model %s", model_path)
        return Int8Model(model_path, report, created=False)
    if samples is None:
        raise ExportError("no calibrated INT8 model for this network and size yet: pass --calib DIR "
                          "(a folder of real IR/visible pairs or paired clips)")
    start = time.perf_counter()
    calib_idx, held_idx = split_indices(len(samples), opts.calib_count, opts.gate_count)
    src = fp32_path()
    reader = lambda: FeedReader(samples.luma(i, shape) for i in calib_idx)  # noqa: E731
    model_path, _ = produce_once(model_path, lambda tmp: quantize_onnx(src, tmp, reader, opts))
    held = [samples.luma(i, shape) for i in held_idx]
    report = gate_int8(ort_session(src, threads), ort_session(model_path, threads), held, opts)
    gate_path.write_text(json.dumps(report.to_dict() | {"calibration": [str(f) for f in samples.folders],
                                                          "calib_pairs": len(calib_idx)}, indent=2) + "\n")
    seconds = time.perf_counter() - start
    log.info("quantised %s in %.1f s on %d real pairs; %s", model_path.name, seconds, len(calib_idx),
             report.describe())
    return Int8Model(model_path, report, created=True, seconds=seconds)


def _only_cached_calib(root: Path, model_id: str, shape: tuple[int, int], opts: Int8Options) -> str:
    """The calibration id of the one cached model for (model, shape, recipe), when no data is given."""
    pattern = f"fusion-{model_id[:16]}-{shape[0]}x{shape[1]}-b1-{opts.tag()}-cal*-int8.gate.json"
    found = sorted((root / "int8").glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        return "none"
    return found[-1].name.split("-cal", 1)[1].split("-int8", 1)[0]


def _record_fields() -> set[str]:
    return {"psnr_db", "mean_psnr_db", "max_abs", "pairs", "min_psnr_db", "max_abs_bound", "label"}
