"""Running a serialized TensorRT engine: device buffers, named-tensor I/O, one stream.

Device memory comes from PyTorch's CUDA allocator when torch has CUDA (desktop, and Jetson with
NVIDIA's torch wheel), else from pycuda (Jetson with a CPU-only torch; build pycuda there, see
docs/export.md). Uses TensorRT's named-tensor API (≥ 8.5: ``set_tensor_address``,
``execute_async_v3``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TensorRTUnavailable
from .trt_import import require_tensorrt


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    is_input: bool


class DeviceBuffers:
    """Minimal device-memory helper over torch.cuda (preferred) or pycuda."""

    def __init__(self, device_index: int = 0):
        self.device_index = device_index
        self._torch = None
        try:
            import torch

            if torch.cuda.is_available():
                self._torch = torch
        except ImportError:
            pass
        if self._torch is None:
            try:
                import pycuda.autoinit  # noqa: F401  (creates the context)
                import pycuda.driver as cuda
            except ImportError:
                raise TensorRTUnavailable("no CUDA device memory: torch has no CUDA here and pycuda is not "
                                          "installed (see docs/export.md, 'Jetson')") from None
            self._cuda = cuda
            self._stream = cuda.Stream()

    @property
    def stream_handle(self) -> int:
        """The CUDA stream the engine runs on, as an integer handle."""
        if self._torch is not None:
            return self._torch.cuda.current_stream(self.device_index).cuda_stream
        return self._stream.handle

    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        """A device buffer of ``shape`` and numpy ``dtype``."""
        if self._torch is not None:
            tdtype = self._torch.from_numpy(np.empty(0, dtype=dtype)).dtype
            return self._torch.empty(tuple(shape), dtype=tdtype, device=f"cuda:{self.device_index}")
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        return self._cuda.mem_alloc(nbytes), tuple(shape), np.dtype(dtype)

    def upload(self, array: np.ndarray):
        """Copy a host array to a new device buffer."""
        array = np.ascontiguousarray(array)
        if self._torch is not None:
            return self._torch.from_numpy(array).to(f"cuda:{self.device_index}", non_blocking=False)
        buf = self.empty(array.shape, array.dtype)
        self._cuda.memcpy_htod_async(buf[0], array, self._stream)
        return buf

    def download(self, buf) -> np.ndarray:
        """Copy a device buffer back to a new host array (synchronises)."""
        if self._torch is not None:
            return buf.cpu().numpy()
        host = np.empty(buf[1], dtype=buf[2])
        self._cuda.memcpy_dtoh_async(host, buf[0], self._stream)
        self._stream.synchronize()
        return host

    def pointer(self, buf) -> int:
        """Device address of a buffer."""
        return int(buf.data_ptr()) if self._torch is not None else int(buf[0])

    def synchronize(self) -> None:
        if self._torch is not None:
            self._torch.cuda.synchronize(self.device_index)
        else:
            self._stream.synchronize()


class TensorRTEngine:
    """A deserialized engine with an execution context; ``run`` maps input arrays to output arrays."""

    def __init__(self, engine_path: str | os.PathLike, device_index: int = 0):
        trt = require_tensorrt()
        path = Path(engine_path)
        if not path.is_file():
            raise TensorRTUnavailable(f"TensorRT engine not found: {path}")
        self._buffers = DeviceBuffers(device_index)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise TensorRTUnavailable(f"cannot deserialize {path}: built by another TensorRT version "
                                      f"or for another GPU")
        self.context = self.engine.create_execution_context()
        self.specs = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.specs.append(TensorSpec(
                name=name, shape=tuple(self.engine.get_tensor_shape(name)),
                dtype=np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))),
                is_input=self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [s for s in self.specs if s.is_input]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [s for s in self.specs if not s.is_input]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once: host arrays in (by input name), host arrays out (by output name)."""
        held = []
        for spec in self.inputs:
            if spec.name not in feeds:
                raise ValueError(f"missing engine input {spec.name!r}")
            array = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
            if -1 in spec.shape:
                self.context.set_input_shape(spec.name, array.shape)
            elif tuple(array.shape) != spec.shape:
                raise ValueError(f"engine input {spec.name!r} is {spec.shape}, got {tuple(array.shape)}; "
                                 f"build an engine for this shape")
            buf = self._buffers.upload(array)
            held.append(buf)
            self.context.set_tensor_address(spec.name, self._buffers.pointer(buf))
        outs = {}
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            buf = self._buffers.empty(shape, spec.dtype)
            outs[spec.name] = buf
            self.context.set_tensor_address(spec.name, self._buffers.pointer(buf))
        if not self.context.execute_async_v3(self._buffers.stream_handle):
            raise RuntimeError("TensorRT execution failed")
        self._buffers.synchronize()
        return {name: self._buffers.download(buf) for name, buf in outs.items()}

    def close(self) -> None:
        """Release the context and engine (device memory goes with them)."""
        self.context = None
        self.engine = None
