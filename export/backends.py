"""Inference backends behind one interface: ``FusionBackend.fuse(ir_y, vis_y) -> fused``.

* ``torch``: ``DeployFusionNet`` eager on CPU or CUDA (fp32/fp16, channels-last and CUDA graphs on GPU).
* ``onnxruntime``: the exported ONNX (dynamic H×W and batch, cached once per weights and precision)
  on the CPU provider, or the CUDA provider when onnxruntime-gpu and a GPU are present.
* ``onnxruntime-int8``: a static-shape QDQ INT8 model per input shape, calibrated on real pairs
  (``calib``) and gated against FP32 (see int8_onnx), on the CPU provider.
* ``tensorrt``: one static engine per input shape, built once and cached (see tensorrt_build).

``create_backend("auto")`` with a known input size (``imgsz``) builds every usable backend, drops
those failing their gate, times the rest on that shape and keeps the fastest (auto_select; the
decision is cached per model + shape + machine). Without a size it takes the first usable one of:
on a GPU TensorRT, torch (CUDA graphs), onnxruntime-CUDA; on a CPU onnxruntime, then torch.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import torch

from tdfusion_edge.errors import TDFusionError

from .deploy_net import deploy_module
from .engine_cache import CacheKey, cache_root, model_hash, produce_once
from .errors import BackendUnavailable

BACKEND_KINDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8", "tensorrt")
log = logging.getLogger(__name__)


class FusionBackend(abc.ABC):
    """Fuses luminance pairs: float32 H×W (or B×H×W) in [0,1] each → the raw network output, same shape."""

    name: str = "base"
    device: str = "cpu"
    precision: str = "fp32"

    def fuse(self, ir_y: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        """Fuse one pair (H×W) or a batch (B×H×W); returns float32 of the same shape in [0,1]."""
        ir, vis = np.asarray(ir_y), np.asarray(vis_y)
        if ir.shape != vis.shape:
            raise TDFusionError(f"IR {ir.shape} and visible {vis.shape} luminance must have the same shape")
        if ir.ndim not in (2, 3) or ir.size == 0:
            raise TDFusionError(f"luminance must be H×W or B×H×W, got shape {ir.shape}")
        single = ir.ndim == 2
        out = self._run(_as_batch(ir), _as_batch(vis))
        return out.reshape(ir.shape[-2:] if single else (ir.shape[0], *ir.shape[-2:])).astype(np.float32, copy=False)

    @abc.abstractmethod
    def _run(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        """B×1×H×W float32 pair → B×1×H×W float32."""

    def close(self) -> None:
        """Release sessions, engines and device memory."""

    def describe(self) -> str:
        """One line for logs: backend, device, precision."""
        return f"{self.name} ({self.device}, {self.precision})"

    def __enter__(self) -> "FusionBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_batch(a: np.ndarray) -> np.ndarray:
    """H×W or B×H×W → contiguous float32 B×1×H×W."""
    return np.ascontiguousarray(a.reshape(-1, 1, *a.shape[-2:]), dtype=np.float32)


class TorchBackend(FusionBackend):
    """Eager PyTorch on ``DeployFusionNet``; on CUDA optionally FP16, channels-last and one CUDA graph per shape."""

    name = "torch"

    def __init__(self, net: torch.nn.Module, device: str = "cpu", half: bool = False,
                 channels_last: bool | None = None, cuda_graphs: bool | None = None, threads: int | None = None):
        dev = torch.device(device)
        if half and dev.type != "cuda":
            raise BackendUnavailable("--half with the torch backend needs a CUDA device "
                                     "(CPUs have no fast FP16 path here)")
        if threads:
            torch.set_num_threads(int(threads))
        self.device = str(dev)
        self.precision = "fp16" if half else "fp32"
        self.module = deploy_module(net, torch.float16 if half else torch.float32).to(dev)
        # Off by default: the deploy graph's Gram/stat matmuls read NCHW views, channels-last makes them copy.
        self.channels_last = bool(channels_last)
        if self.channels_last:  # conv weights only: the reduction buffers are not 4-D
            for conv in self.module.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
        self.cuda_graphs = dev.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and dev.type != "cuda":
            raise BackendUnavailable("CUDA graphs need a CUDA device")
        self._graphs: dict[tuple[int, ...], tuple] = {}

    def _inputs(self, ir: np.ndarray, vis: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return tuple(torch.from_numpy(a).to(self.device, non_blocking=True).contiguous(memory_format=fmt)
                     for a in (ir, vis))

    def _capture(self, shape: tuple[int, ...]):
        """Record the forward pass for one input shape (static buffers, warm-up on a side stream)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        static = [torch.zeros(shape, device=self.device).contiguous(memory_format=fmt) for _ in range(2)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.module(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.module(*static)
        return graph, static, out

    def _run(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            if not self.cuda_graphs:
                return self.module(*self._inputs(ir, vis)).float().cpu().numpy()
            key = tuple(ir.shape)
            if key not in self._graphs:
                self._graphs[key] = self._capture(key)
            graph, static, out = self._graphs[key]
            for buf, src in zip(static, self._inputs(ir, vis)):
                buf.copy_(src)
            graph.replay()
            return out.float().cpu().numpy()

    def close(self) -> None:
        self._graphs.clear()


class OnnxRuntimeBackend(FusionBackend):
    """The exported ONNX graph in onnxruntime (CPU provider, or CUDA provider on a GPU)."""

    name = "onnxruntime"

    def __init__(self, net: torch.nn.Module, device: str = "cpu", half: bool = False,
                 cache_dir: str | os.PathLike | None = None, threads: int | None = None):
        from .onnx_export import export_fusion_onnx

        if importlib.util.find_spec("onnxruntime") is None:
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu)")
        import onnxruntime as ort

        dev = torch.device(device)
        if dev.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)")
            providers = [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]
        else:
            if half:
                raise BackendUnavailable("--half with onnxruntime needs its CUDA provider; the CPU provider runs FP32")
            providers = ["CPUExecutionProvider"]
        self.device = str(dev)
        self.precision = "fp16" if half else "fp32"
        if not threads and dev.type == "cpu":
            threads = torch.get_num_threads()
        key = CacheKey(model_hash(net), self.precision, shape=None, batch=None, options="float-none-opset18")

        def export(tmp):  # no down-conversion: ORT reads opset 18
            export_fusion_onnx(net, tmp, imgsz=None, batch=None, precision=self.precision, opset=18)

        self.onnx_path, self.session = self._cached_session(key.onnx_path(cache_root(cache_dir)), export,
                                                            lambda path: _checked_session(path, threads, providers))

    @staticmethod
    def _cached_session(path, export, open_session):
        """(path or None, session) from the cache: a corrupt entry is rebuilt; an unwritable cache runs uncached."""
        import tempfile
        from pathlib import Path

        def uncached() -> bytes:
            try:
                with tempfile.TemporaryDirectory(prefix="tdfusion-onnx-") as tmp:
                    export(Path(tmp) / path.name)
                    return (Path(tmp) / path.name).read_bytes()
            except OSError as exc:
                raise OrtUnusable(f"no writable folder to export the ONNX graph into ({exc.strerror or exc})") from None

        def fresh_session(source):
            try:
                return open_session(source)
            except _CorruptOnnx as exc:  # a fresh export that onnxruntime cannot run: not a cache problem
                raise OrtUnusable(f"onnxruntime cannot run the exported graph: {exc}") from None

        try:
            onnx_path, created = produce_once(path, export)
        except OSError as exc:
            log.warning("ONNX cache %s is not writable (%s); running uncached", path.parent, exc.strerror or exc)
            return None, fresh_session(uncached())
        log.info("%s ONNX %s", "exported" if created else "reusing", onnx_path)
        if created:
            return onnx_path, fresh_session(onnx_path)
        try:
            return onnx_path, open_session(onnx_path)
        except _CorruptOnnx as exc:
            log.warning("cached ONNX %s is corrupt (%s); rebuilding it", onnx_path, exc)
        try:
            onnx_path.unlink()
            onnx_path, _ = produce_once(path, export)
        except OSError as exc:  # a read-only cache holding a bad file: export into a temp folder instead
            log.warning("cannot replace %s (%s); running uncached", onnx_path, exc.strerror or exc)
            return None, fresh_session(uncached())
        log.info("exported ONNX %s", onnx_path)
        return onnx_path, fresh_session(onnx_path)

    def _run(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        return self.session.run(["fused"], {"ir": ir, "vis": vis})[0]

    def close(self) -> None:
        self.session = None


class OrtUnusable(BackendUnavailable):
    """onnxruntime is installed but cannot build or run a session of a freshly exported graph."""


class _CorruptOnnx(Exception):
    """An ONNX file (or bytes) that onnxruntime rejects or that does not behave like our fusion graph."""


def _checked_session(source, threads, providers):
    """An onnxruntime session of ``source`` proven on a tiny input; any failure is ``_CorruptOnnx``."""
    from .onnx_check import ort_session

    try:
        session = ort_session(source, threads, providers)
        if {i.name for i in session.get_inputs()} != {"ir", "vis"} or "fused" not in {
                o.name for o in session.get_outputs()}:
            raise ValueError("inputs/outputs are not ir, vis -> fused")
        probe = np.full((1, 1, 16, 16), 0.5, np.float32)
        out = session.run(["fused"], {"ir": probe, "vis": probe})[0]
        if out.shape != probe.shape:
            raise ValueError(f"output shape {out.shape} for input {probe.shape}")
    except BackendUnavailable:
        raise
    except Exception as exc:  # InvalidProtobuf, Fail, RuntimeException, ...: all mean "this file is unusable"
        text = str(exc).strip().splitlines()
        raise _CorruptOnnx((text[0] if text else type(exc).__name__)[:200]) from None
    return session


class OnnxRuntimeInt8Backend(FusionBackend):
    """Static INT8 (QDQ) ONNX on the CPU provider, one model per input shape, each calibrated and gated once."""

    name = "onnxruntime-int8"
    precision = "int8"

    def __init__(self, net: torch.nn.Module, calib=None, imgsz: tuple[int, int] | None = None,
                 cache_dir: str | os.PathLike | None = None, threads: int | None = None, options=None):
        from .int8_onnx import Int8Options

        if importlib.util.find_spec("onnxruntime") is None:
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)")
        self.net, self.calib, self.cache_dir = net, calib, cache_dir
        self.options = options or Int8Options()
        keep = tuple(getattr(net, "INT8_FLOAT_WEIGHTS", ()))   # the network names what must stay float
        if keep and not self.options.float_weights:
            self.options = dataclasses.replace(self.options, float_weights=keep)
        self.threads = threads or torch.get_num_threads()
        self.model_id = model_hash(net)
        self.gate_report = None
        self._sessions: dict[tuple[int, int], object] = {}
        if imgsz is not None:
            self._session((int(imgsz[0]), int(imgsz[1])))

    def _fp32_onnx(self, shape: tuple[int, int]) -> Path:
        from .onnx_export import export_fusion_onnx

        key = CacheKey(self.model_id, "fp32", shape=shape, batch=1, options="float-none-opset18")
        path, _ = produce_once(key.onnx_path(cache_root(self.cache_dir)), lambda tmp: export_fusion_onnx(
            self.net, tmp, imgsz=shape, batch=1, precision="fp32", opset=18))
        return path

    def _session(self, shape: tuple[int, int]):
        from .int8_onnx import build_int8_cached
        from .onnx_check import ort_session

        if shape not in self._sessions:
            model = build_int8_cached(lambda: self._fp32_onnx(shape), self.model_id, shape, self.calib,
                                      self.options, self.cache_dir, self.threads).require_passed()
            log.info("INT8 %s: %s", model.path.name, model.report.describe())
            self.gate_report = model.report
            self.onnx_path = model.path
            self._sessions[shape] = ort_session(model.path, self.threads)
        return self._sessions[shape]

    def _run(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        session = self._session((ir.shape[2], ir.shape[3]))
        return np.concatenate([session.run(None, {"ir": ir[i:i + 1], "vis": vis[i:i + 1]})[0]
                               for i in range(ir.shape[0])])

    def close(self) -> None:
        self._sessions.clear()


class TensorRTBackend(FusionBackend):
    """TensorRT engines, one per input shape (built on first use of a shape, cached on disk)."""

    name = "tensorrt"

    def __init__(self, net: torch.nn.Module, device: str = "cuda", half: bool = False,
                 imgsz: tuple[int, int] | None = None, cache_dir: str | os.PathLike | None = None,
                 workspace_gb: float = 2.0):
        from .trt_import import require_tensorrt

        require_tensorrt()
        dev = torch.device(device)
        if dev.type != "cuda":
            raise BackendUnavailable("the tensorrt backend needs a CUDA device")
        self.net, self.cache_dir, self.workspace_gb = net, cache_dir, workspace_gb
        self.device = str(dev)
        self.device_index = dev.index or 0
        self.precision = "fp16" if half else "fp32"
        self._engines: dict[tuple[int, ...], object] = {}
        if imgsz is not None:
            self._engine((1, 1, int(imgsz[0]), int(imgsz[1])))

    def _engine(self, shape: tuple[int, ...]):
        from .tensorrt_build import EngineOptions, build_engine_cached
        from .tensorrt_runtime import TensorRTEngine

        if shape not in self._engines:
            opts = EngineOptions(shape=(shape[2], shape[3]), precision=self.precision, batch=shape[0],
                                 workspace_gb=self.workspace_gb)
            path, built, _ = build_engine_cached(self.net, opts, self.cache_dir, self.device_index)
            log.info("%s engine %s", "built" if built else "reusing", path)
            self._engines[shape] = TensorRTEngine(path, self.device_index)
        return self._engines[shape]

    def _run(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        return self._engine(tuple(ir.shape)).run({"ir": ir, "vis": vis})["fused"]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def available_backends() -> list[str]:
    """Backends usable on this machine, fastest first (the order ``auto`` tries them in)."""
    ort = importlib.util.find_spec("onnxruntime") is not None
    if _cuda_available():
        kinds = []
        if importlib.util.find_spec("tensorrt") is not None:
            kinds.append("tensorrt")
        kinds.append("torch")
        if ort:
            import onnxruntime

            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                kinds.append("onnxruntime")
        return kinds
    return (["onnxruntime"] if ort else []) + ["torch"]


def _resolve_device(device: str) -> str:
    if device in (None, "", "auto"):
        return "cuda" if _cuda_available() else "cpu"
    if device.startswith("cuda") and not _cuda_available():
        raise BackendUnavailable(f"--device {device} asked for, but no CUDA device is available here")
    try:
        return str(torch.device(device))
    except RuntimeError:
        raise TDFusionError(f"unknown device {device!r}") from None


def load_weights(weights: str | os.PathLike | None) -> torch.nn.Module:
    """The FusionNet of ``weights`` (any supported checkpoint), or the package's default weights."""
    from tdfusion_edge.checkpoints import default_weights_path, load_fusion_net

    if weights is None:
        path = default_weights_path()
        if not path.is_file():
            raise TDFusionError(f"default weights {path} are missing; pass --weights (e.g. a released ReFusion .pth)")
        weights = path
    return load_fusion_net(weights)


def create_backend(kind: str = "auto", weights: str | os.PathLike | None = None, device: str = "auto",
                   half: bool = False, imgsz: tuple[int, int] | None = None,
                   cache_dir: str | os.PathLike | None = None, *, threads: int | None = None,
                   net: torch.nn.Module | None = None, calib=None, int8_options=None) -> FusionBackend:
    """Build a fusion backend.

    ``kind``: auto | torch | onnxruntime | onnxruntime-int8 | tensorrt. ``weights`` None → package
    default weights (or pass a loaded ``net``). ``imgsz`` (H, W): the input size, used to pre-build
    static engines/INT8 models and to let ``auto`` measure. ``calib``: folder(s) of real pairs for
    INT8 calibration. ``threads``: CPU threads (default: torch's setting). Unusable combinations raise one line.
    """
    if kind not in BACKEND_KINDS:
        raise TDFusionError(f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
    dev = _resolve_device(device)
    net = net if net is not None else load_weights(weights)
    if kind == "onnxruntime-int8" and dev != "cpu":
        raise BackendUnavailable("the onnxruntime-int8 backend runs on the CPU (use tensorrt with --int8 on a GPU)")
    builders = {
        "torch": lambda: TorchBackend(net, dev, half, threads=threads),
        "onnxruntime": lambda: OnnxRuntimeBackend(net, dev, half, cache_dir, threads),
        "onnxruntime-int8": lambda: OnnxRuntimeInt8Backend(net, calib, imgsz, cache_dir, threads, int8_options),
        "tensorrt": lambda: TensorRTBackend(net, dev, half, imgsz, cache_dir),
    }
    if kind == "onnxruntime":
        try:
            return builders[kind]()
        except OrtUnusable as exc:  # asked for onnxruntime, but it cannot run here: still fuse, and say so
            log.warning("%s; falling back to the torch backend", exc)
            return builders["torch"]()
    if kind != "auto":
        return builders[kind]()
    if half and not dev.startswith("cuda"):
        log.warning("--half ignored: no CUDA device, the CPU backends run FP32")
        half = False
    order = available_backends() if dev.startswith("cuda") else [k for k in available_backends() if k != "tensorrt"]
    if imgsz is not None:
        return _auto_measured(order, builders, net, (int(imgsz[0]), int(imgsz[1])), dev, cache_dir, threads, calib)
    reasons = []
    for candidate in order:
        try:
            backend = builders[candidate]()
            log.info("auto backend: %s (no input size given, so not measured)", backend.describe())
            return backend
        except BackendUnavailable as exc:
            if isinstance(exc, OrtUnusable):
                log.warning("%s; trying the next backend", exc)
            reasons.append(f"{candidate}: {exc}")
    raise BackendUnavailable("no usable backend: " + "; ".join(reasons))


def _auto_measured(order: list[str], builders: dict, net: torch.nn.Module, shape: tuple[int, int], dev: str,
                   cache_dir, threads: int | None, calib) -> FusionBackend:
    """The fastest gated backend at ``shape``: a cached decision when there is one, else measured now."""
    from .auto_select import decision_path, machine_id, read_decision, select_fastest

    if dev == "cpu" and "onnxruntime" in order:  # INT8 after its FP32 reference (the probe gate's reference)
        order = order[:order.index("onnxruntime") + 1] + ["onnxruntime-int8"] + order[order.index("onnxruntime") + 1:]
    tag = "+".join(order) + ("-calib" if calib is not None else "")
    path = decision_path(model_hash(net), shape, machine_id(threads), cache_dir, tag)
    decision = read_decision(path)
    if decision and decision.get("choice") in builders:
        try:
            backend = builders[decision["choice"]]()
            numbers = ", ".join(f"{m['kind']} {m['ms']:.1f} ms" for m in decision.get("measured", []) if m.get("ms"))
            log.info("auto backend at %dx%d: %s (cached decision %s: %s)", *shape, backend.describe(), path, numbers)
            return backend
        except TDFusionError as exc:
            log.info("cached auto decision %s no longer usable (%s): measuring again", decision["choice"], exc)
    backend, _ = select_fastest([(k, builders[k]) for k in order], shape, cache_file=path)
    return backend
