"""Inference backends behind one interface: ``FusionBackend.fuse(ir_y, vis_y) -> fused``.

* ``torch``: ``DeployFusionNet`` eager on CPU or CUDA (fp32/fp16, channels-last and CUDA graphs on GPU).
* ``onnxruntime``: the exported ONNX (dynamic H×W and batch, cached once per weights and precision)
  on the CPU provider, or the CUDA provider when onnxruntime-gpu and a GPU are present.
* ``tensorrt``: one static engine per input shape, built once and cached (see tensorrt_build).

``create_backend("auto")`` picks the fastest usable one: on a GPU TensorRT, then torch (CUDA graphs),
then onnxruntime-CUDA; on a CPU onnxruntime, then torch (see docs/export.md for the measurements).
"""
from __future__ import annotations

import abc
import importlib.util
import logging
import os

import numpy as np
import torch

from tdfusion_edge.errors import TDFusionError

from .deploy_net import DeployFusionNet
from .engine_cache import CacheKey, cache_root, model_hash, produce_once
from .errors import BackendUnavailable

BACKEND_KINDS = ("auto", "torch", "onnxruntime", "tensorrt")
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
        self.module = DeployFusionNet(net, torch.float16 if half else torch.float32).to(dev)
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
        from .onnx_check import ort_session
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
        key = CacheKey(model_hash(net), self.precision, shape=None, batch=None, options="float-none-opset18")
        self.onnx_path, created = produce_once(key.onnx_path(cache_root(cache_dir)), lambda tmp: export_fusion_onnx(
            net, tmp, imgsz=None, batch=None, precision=self.precision, opset=18))  # no down-conversion: ORT reads 18
        log.info("%s ONNX %s", "exported" if created else "reusing", self.onnx_path)
        if not threads and dev.type == "cpu":
            threads = torch.get_num_threads()
        self.session = ort_session(self.onnx_path, threads, providers)

    def _run(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        return self.session.run(["fused"], {"ir": ir, "vis": vis})[0]

    def close(self) -> None:
        self.session = None


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
                   net: torch.nn.Module | None = None) -> FusionBackend:
    """Build a fusion backend.

    ``kind``: auto | torch | onnxruntime | tensorrt. ``weights`` None → package default weights
    (or pass a loaded ``net``). ``imgsz`` (H, W) pre-builds the TensorRT engine for that size.
    ``threads``: CPU threads (default: torch's setting). Unusable combinations raise one line.
    """
    if kind not in BACKEND_KINDS:
        raise TDFusionError(f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
    dev = _resolve_device(device)
    net = net if net is not None else load_weights(weights)
    builders = {
        "torch": lambda: TorchBackend(net, dev, half, threads=threads),
        "onnxruntime": lambda: OnnxRuntimeBackend(net, dev, half, cache_dir, threads),
        "tensorrt": lambda: TensorRTBackend(net, dev, half, imgsz, cache_dir),
    }
    if kind != "auto":
        return builders[kind]()
    if half and not dev.startswith("cuda"):
        log.warning("--half ignored: no CUDA device, the CPU backends run FP32")
        half = False
    order = available_backends() if dev.startswith("cuda") else [k for k in available_backends() if k != "tensorrt"]
    reasons = []
    for candidate in order:
        try:
            backend = builders[candidate]()
            log.info("auto backend: %s", backend.describe())
            return backend
        except BackendUnavailable as exc:
            reasons.append(f"{candidate}: {exc}")
    raise BackendUnavailable("no usable backend: " + "; ".join(reasons))
