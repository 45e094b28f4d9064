"""Checks of an exported ONNX file: ``onnx.checker``, onnxruntime sessions, parity with PyTorch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import BackendUnavailable, ExportError

# Sum-like ops over many pixels: in a half graph their inputs must be FP32 (see docs/export.md).
REDUCTION_OPS = ("MatMul", "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "Softmax")


def check_onnx(path: str | os.PathLike) -> None:
    """``onnx.checker`` with full shape/type inference; any failure is one ExportError line."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # checker raises ValidationError and inference errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"onnx.checker rejected {path}: {first[:300]}") from None


def ort_session(path: str | os.PathLike | bytes, threads: int | None = None, providers: Sequence[str] | None = None,
                spinning: bool = False):
    """An onnxruntime session with all graph optimisations; ``threads`` intra-op threads (None = ORT default).

    Worker threads do not spin-wait between ops unless ``spinning``: the same latency here when the
    machine is quiet, and no CPU stolen from other threads (camera, detector) or processes.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu)") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3          # the NCHWc notes are not for users
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, opts, providers=list(providers or ["CPUExecutionProvider"]))


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def max_abs_diffs(reference: Sequence, candidate: Sequence, names: Sequence[str]) -> dict[str, float]:
    """Per output: max |reference − candidate| (uint8 outputs compared as integers)."""
    out = {}
    for name, a, b in zip(names, reference, candidate):
        a, b = _as_numpy(a), _as_numpy(b)
        if a.shape != b.shape:
            raise ExportError(f"output {name}: shape {b.shape} from onnxruntime, {a.shape} from PyTorch")
        out[name] = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    return out


def onnx_parity(module: torch.nn.Module, path, inputs: Sequence[torch.Tensor],
                threads: int | None = None) -> dict[str, float]:
    """Run the PyTorch module and the ONNX file (path, or an open session) on the same inputs;
    max abs difference per output."""
    session = path if hasattr(path, "get_outputs") else ort_session(path, threads)
    names = [o.name for o in session.get_outputs()]
    feeds = {i.name: _as_numpy(x) for i, x in zip(session.get_inputs(), inputs)}
    got = session.run(None, feeds)
    with torch.inference_mode():
        ref = module(*inputs)
    ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    return max_abs_diffs(ref, got, names)


def reduction_input_types(path: str | os.PathLike) -> dict[str, list[str]]:
    """For every reduction-like node (MatMul, ReduceSum, Softmax, ...): the element types of its inputs.

    Used to verify that a half graph keeps its reductions in FP32.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:                  # Constant nodes carry their own types
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    name = onnx.TensorProto.DataType.Name
    return {f"{n.op_type}:{n.name}": [name(types[i]) if i in types else "?" for i in n.input if i]
            for n in model.graph.node if n.op_type in REDUCTION_OPS}


def onnx_io(path: str | os.PathLike) -> dict[str, list[tuple[str, str, list]]]:
    """Inputs and outputs of an ONNX file: (name, element type, dims with symbolic names)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            tt = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tt.shape.dim]
            out.append((v.name, onnx.TensorProto.DataType.Name(tt.elem_type), dims))
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def file_size_mb(path: str | os.PathLike) -> float:
    """Size of a file in MiB."""
    return Path(path).stat().st_size / 2**20
