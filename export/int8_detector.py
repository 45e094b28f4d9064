"""Static INT8 ONNX (QDQ) of the YOLOv8 detector for onnxruntime on the CPU: calibrated on real
letterboxed frames, gated against FP32 on the raw head outputs, cached by model hash + shape.

The detector sees the frame the app shows; calibration uses the visible frames of real pairs (a folder
with ``ir/`` + ``vi/`` images, e.g. MSRS, or paired clips, e.g. M3SVD), letterboxed to the static
input shape exactly as ``apps.detection.OnnxYoloDetector`` does at run time.

What is quantised: every op onnxruntime can quantise in the backbone, neck and the head's conv
branches (Conv, Mul/Sigmoid of SiLU, Add, Concat, MaxPool, Resize), weights int8 per output channel,
activations uint8 (U8S8, the VNNI form). What stays float: the box decoding after the head
(DFL softmax and its conv, anchors, strides), where a uint8 scale would round box coordinates.

**Gate** (held-out frames, disjoint from calibration), on the raw head outputs before NMS:

* boxes: the 99th percentile of |INT8 − FP32| over every decoded box coordinate (x, y, w, h in input
  pixels) ≤ ``max_box_px`` (2 px: below what NMS and drawing can show);
* class logits (B×nc×A, the input of the score sigmoid): L2 error relative to their signal
  ``‖q − f‖ / ‖f − mean_A f‖`` ≤ ``max_rel`` (0.15);
* agreement of the ``top_k`` (100) highest class scores (anchor, class) of INT8 with FP32 ≥ ``min_topk`` (0.8).

With an untrained ``yolov8n.yaml`` model the gate still measures the numerical drift of the graph.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .engine_cache import cache_root, produce_once
from .errors import ExportError
from .int8_onnx import Int8Rejected, count_quant_nodes

log = logging.getLogger(__name__)

DET_QUANT_VERSION = "det-qdq-v1"   # bump when the recipe or the exported graph changes
INPUT = "images"
OUTPUT = "output0"
RAW_CLS = "raw_cls"
LETTERBOX_FILL = 114                # ultralytics' padding grey
STRIDE = 32


@dataclass(frozen=True)
class DetInt8Options:
    """The detector's quantisation recipe and its gate bounds."""

    calib_count: int = 16
    gate_count: int = 4
    max_box_px: float = 2.0     # p99 of the decoded box coordinates' error, input pixels
    max_rel: float = 0.15       # class logits: L2 error of INT8 against FP32, relative to their signal
    min_topk: float = 0.8       # share of FP32's top-k class scores that INT8 also ranks top-k
    top_k: int = 100

    def tag(self) -> str:
        """What shapes the quantised file (not the bounds: a cached record is re-judged against new ones)."""
        return f"{DET_QUANT_VERSION}-c{self.calib_count}-g{self.gate_count}"


@dataclass(frozen=True)
class DetGateReport:
    """INT8 vs FP32 drift of the detector's raw head outputs on held-out frames (worst frame)."""

    box_px: float
    cls_rel: float
    topk_agree: float
    frames: int
    max_box_px: float
    max_rel: float
    min_topk: float
    top_k: int

    @property
    def passed(self) -> bool:
        return self.box_px <= self.max_box_px and self.cls_rel <= self.max_rel and self.topk_agree >= self.min_topk

    def describe(self) -> str:
        verdict = "kept" if self.passed else "rejected"
        return (f"detector INT8 vs FP32 on {self.frames} held-out frame(s): box p99 error {self.box_px:.3f} px "
                f"(bound {self.max_box_px:g}), class logits rel err {self.cls_rel:.4f} (bound {self.max_rel:g}), top-{self.top_k} score "
                f"agreement {self.topk_agree:.2f} (bound {self.min_topk:g}) → {verdict}")

    def with_bounds(self, opts: DetInt8Options) -> "DetGateReport":
        from dataclasses import replace
        return replace(self, max_box_px=opts.max_box_px, max_rel=opts.max_rel, min_topk=opts.min_topk)


@dataclass
class DetInt8Model:
    """A cached quantised detector and its gate record."""

    path: Path
    fp32_path: Path
    report: DetGateReport
    created: bool
    seconds: float = 0.0

    def require_passed(self) -> "DetInt8Model":
        """Raise one line when the gate refused this model."""
        if not self.report.passed:
            raise Int8Rejected(f"INT8 detector refused: {self.report.describe()}; use --det-precision fp32 "
                               f"or loosen the bound")
        return self


# ------------------------------------------------------------------------------------------ input
def detector_shape(frame_hw: tuple[int, int], imgsz: int | None = None) -> tuple[int, int]:
    """The static detector input for frames of ``frame_hw``: scaled so the long side is ``imgsz``
    (default: the frame's), each side rounded up to the stride, as ultralytics' rectangular letterbox."""
    h, w = int(frame_hw[0]), int(frame_hw[1])
    r = (imgsz or max(h, w)) / max(h, w)
    return tuple(int(np.ceil(round(s * r) / STRIDE) * STRIDE) for s in (h, w))


def letterbox(bgr: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """BGR uint8 frame → float32 1×3×H×W RGB in [0,1], centred with grey padding; also (scale, (top, left))."""
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    h, w = bgr.shape[:2]
    r = min(shape[0] / h, shape[1] / w)
    nh, nw = round(h * r), round(w * r)
    img = bgr if (nh, nw) == (h, w) else cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (shape[0] - nh) // 2, (shape[1] - nw) // 2
    canvas = np.full((shape[0], shape[1], 3), LETTERBOX_FILL, np.uint8)
    canvas[top:top + nh, left:left + nw] = img
    x = canvas[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) * (1.0 / 255.0)
    return np.ascontiguousarray(x), r, (top, left)


def calibration_frames(calib, shape: tuple[int, int], indices: Sequence[int]) -> list[np.ndarray]:
    """Letterboxed visible frames ``indices`` of a ``PairSamples`` source."""
    out = []
    for i in indices:
        vis = calib.frames(i)[1]
        if vis.dtype != np.uint8:   # 16-bit visible is rare; scale to 8 bits like a display would
            vis = cv2.normalize(vis, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        out.append(letterbox(vis, shape)[0])
    return out


# ------------------------------------------------------------------------------------------ export
def export_detector_onnx(model, path: str | os.PathLike, shape: tuple[int, int], opset: int = 17) -> Path:
    """Static-shape FP32 ONNX of a YOLOv8 DetectionModel: ``images`` 1×3×H×W → ``output0`` 1×(4+nc)×A,
    plus the raw class logits ``raw_cls`` (for the gate)."""
    import contextlib
    import io
    import warnings

    import torch

    from .graph_parts import prepare_yolo_for_export

    if shape[0] % STRIDE or shape[1] % STRIDE:
        raise ExportError(f"detector input {shape[0]}x{shape[1]}: both sides must be multiples of {STRIDE}")
    net = prepare_yolo_for_export(model)
    path = Path(path)
    # The TorchScript exporter: seconds instead of a minute for YOLOv8, and node names that keep the
    # module path (the gate finds the head by graph structure, not by name).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (torch.zeros(1, 3, *shape),), str(path), input_names=[INPUT],
                              output_names=[OUTPUT], opset_version=opset, dynamo=False)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(f"detector ONNX export failed: {first[:300]}") from exc
    _expose_raw_head(path)
    return path


def _expose_raw_head(path: Path) -> None:
    """Add the head's raw class logits as a graph output (found by structure: the input of the Sigmoid
    that feeds the output; the DFL Softmax must be there too, or this is no YOLOv8 head)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    final = producer[model.graph.output[0].name]
    sigmoid = next((producer[i] for i in final.input if i in producer and producer[i].op_type == "Sigmoid"), None)
    softmax = next((n for n in model.graph.node if n.op_type == "Softmax"), None)
    if sigmoid is None or softmax is None:
        raise ExportError("detector ONNX: cannot find the YOLOv8 head (class Sigmoid, DFL Softmax)")
    model.graph.node.append(helper.make_node("Identity", [sigmoid.input[0]], [RAW_CLS], name=f"{RAW_CLS}_out"))
    model.graph.output.append(helper.make_tensor_value_info(RAW_CLS, onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(path))


def decode_nodes(model) -> list[str]:
    """Nodes of the box decoding (everything downstream of the DFL Softmax's input chain, and the
    output Sigmoid): kept in float."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    producer = {o: n for n in model.graph.node for o in n.output}
    start = softmax.input[0]
    chain = []
    while start in producer and producer[start].op_type in ("Transpose", "Reshape"):
        chain.append(producer[start].name)
        start = producer[start].input[0]
    seen, todo = set(chain), [softmax]
    while todo:          # the decode subgraph: from the softmax to the graph output
        node = todo.pop()
        if node.name in seen and node is not softmax:
            continue
        seen.add(node.name)
        for out in node.output:
            todo += [c for c in consumers.get(out, []) if c.name not in seen]
    final = producer[model.graph.output[0].name]
    seen |= {producer[i].name for i in final.input if i in producer and producer[i].op_type == "Sigmoid"}
    return sorted(seen)


def quantize_detector(fp32_path: Path, out_path: Path, frames: Sequence[np.ndarray]) -> Path:
    """QDQ-quantise the detector at ``out_path``, calibrated (MinMax) on letterboxed ``frames``."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .int8_calib import FeedReader

    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        exclude = decode_nodes(onnx.load(str(pre)))
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.WARNING))   # onnxruntime logs one INFO line per rescaled bias otherwise
        try:
            quantize_static(str(pre), str(out_path), FeedReader({INPUT: f} for f in frames),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
        finally:
            root.setLevel(level)
    finally:
        for leftover in (pre, Path("augmented_model.onnx")):
            if leftover.exists() and leftover != out_path:
                leftover.unlink()
    return out_path


# ------------------------------------------------------------------------------------------ gate
def _rel(ref: np.ndarray, got: np.ndarray) -> float:
    """‖got − ref‖ / ‖ref − its per-channel mean over anchors‖: error against the signal, not the bias
    (an untrained head's logits are nearly its constant bias, which would hide any error)."""
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    signal = ref - ref.mean(axis=-1, keepdims=True)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(signal), 1e-12))


def gate_detector(fp32_session, int8_session, frames: Sequence[np.ndarray],
                  opts: DetInt8Options = DetInt8Options()) -> DetGateReport:
    """Worst-frame drift of INT8 against FP32: box pixels, class logits and top-k class-score agreement."""
    names = [OUTPUT, RAW_CLS]
    box, cls, agree = [], [], []
    for x in frames:
        (f_out, f_cls), (q_out, q_cls) = (s.run(names, {INPUT: x}) for s in (fp32_session, int8_session))
        box.append(float(np.percentile(np.abs(f_out[:, :4].astype(np.float64) - q_out[:, :4]), 99)))
        cls.append(_rel(f_cls, q_cls))
        f_scores, q_scores = f_out[:, 4:].ravel(), q_out[:, 4:].ravel()
        k = min(opts.top_k, f_scores.size)
        top_f, top_q = np.argpartition(f_scores, -k)[-k:], np.argpartition(q_scores, -k)[-k:]
        agree.append(len(np.intersect1d(top_f, top_q)) / k)
    return DetGateReport(max(box), max(cls), min(agree), len(frames), opts.max_box_px, opts.max_rel, opts.min_topk,
                         opts.top_k)


# ------------------------------------------------------------------------------------------ cache
def detector_hash(model) -> str:
    """SHA-256 (hex) of a detector's yaml and weights by value, with the recipe version."""
    import hashlib

    import torch

    digest = hashlib.sha256(DET_QUANT_VERSION.encode())
    digest.update(repr(getattr(model, "yaml", "")).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)   # 0-d buffers (BN counters) cannot be viewed as bytes
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def detector_paths(root: Path, model_id: str, shape: tuple[int, int], opts: DetInt8Options,
                   calib_id: str) -> tuple[Path, Path, Path]:
    """FP32 ONNX, quantised ONNX and gate record of (detector, shape, recipe, calibration set)."""
    base = f"detector-{model_id[:16]}-{shape[0]}x{shape[1]}"
    stem = f"{base}-{opts.tag()}-cal{calib_id}-int8"
    return (root / "onnx" / f"{base}-{DET_QUANT_VERSION}-fp32.onnx", root / "int8" / f"{stem}.onnx",
            root / "int8" / f"{stem}.gate.json")


def fp32_detector_cached(model, shape: tuple[int, int], cache_dir=None) -> Path:
    """The static FP32 detector ONNX for ``shape``, exported once."""
    model_id = detector_hash(model)
    path = detector_paths(cache_root(cache_dir), model_id, shape, DetInt8Options(), "none")[0]
    return produce_once(path, lambda tmp: export_detector_onnx(model, tmp, shape))[0]


def build_detector_int8_cached(model, shape: tuple[int, int], calib=None, opts: DetInt8Options = DetInt8Options(),
                               cache_dir=None, threads: int | None = None) -> DetInt8Model:
    """The quantised detector for (model, shape), built once: calibrate on real frames, gate on held-out ones.

    ``calib``: folder(s) of real pairs (or a ``PairSamples``); may be None when a cached model exists.
    The gate record is re-judged against ``opts``' bounds on every call.
    """
    from .int8_calib import PairSamples, split_indices
    from .onnx_check import ort_session

    root = cache_root(cache_dir)
    model_id = detector_hash(model)
    samples = calib if isinstance(calib, PairSamples) or calib is None else PairSamples(calib)
    calib_id = samples.identity() if samples is not None else _newest_cached_calib(root, model_id, shape, opts)
    fp32_path, model_path, gate_path = detector_paths(root, model_id, shape, opts, calib_id)
    if model_path.is_file() and gate_path.is_file():
        record = json.loads(gate_path.read_text())
        report = DetGateReport(**{k: record[k] for k in DetGateReport.__dataclass_fields__}).with_bounds(opts)
        log.info("reusing INT8 detector %s", model_path)
        return DetInt8Model(model_path, fp32_detector_cached(model, shape, cache_dir), report, created=False)
    if samples is None:
        raise ExportError("no calibrated INT8 detector for this model and size yet: pass --calib DIR "
                          "(a folder of real IR/visible pairs or paired clips)")
    start = time.perf_counter()
    calib_idx, held_idx = split_indices(len(samples), opts.calib_count, opts.gate_count)
    fp32_path = fp32_detector_cached(model, shape, cache_dir)
    frames = calibration_frames(samples, shape, calib_idx)
    produce_once(model_path, lambda tmp: quantize_detector(fp32_path, tmp, frames))
    held = calibration_frames(samples, shape, held_idx)
    report = gate_detector(ort_session(fp32_path, threads), ort_session(model_path, threads), held, opts)
    gate_path.write_text(json.dumps(asdict(report) | {"calibration": [str(f) for f in samples.folders],
                                                       "calib_frames": len(calib_idx),
                                                       "quant_nodes": count_quant_nodes(model_path)}, indent=2) + "\n")
    seconds = time.perf_counter() - start
    log.info("quantised %s in %.1f s on %d real frames; %s", model_path.name, seconds, len(calib_idx),
             report.describe())
    return DetInt8Model(model_path, fp32_path, report, created=True, seconds=seconds)


def _newest_cached_calib(root: Path, model_id: str, shape: tuple[int, int], opts: DetInt8Options) -> str:
    pattern = f"detector-{model_id[:16]}-{shape[0]}x{shape[1]}-{opts.tag()}-cal*-int8.gate.json"
    found = sorted((root / "int8").glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1].name.split("-cal", 1)[1].split("-int8", 1)[0] if found else "none"
