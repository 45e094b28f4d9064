"""Runs ``kernels/cuda/preprocess.cu`` on the GPU, through pycuda or, where it is absent, CuPy.

The two libraries differ only in how they compile, allocate and launch; a small runtime adapter
hides that, and ``CudaPreprocessor`` offers the same methods as ``preprocess.CpuPreprocessor``
(plus one host-in/host-out method per kernel, which the GPU tests compare with the NumPy twins).
Device buffers are kept per shape and reused, so a steady stream allocates nothing per frame.
"""
from __future__ import annotations

import importlib.resources
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .preprocess import NEUTRAL, Planes, is_colour, percentiles_from_histogram


KERNEL_FILE = "preprocess.cu"
# No contracted multiply-adds: the results then round exactly like the NumPy twins.
COMPILE_OPTIONS = ("--fmad=false",)
KERNELS = ("luma_chroma_bgr8", "luma_gray8", "histogram_u16", "normalize_u16", "warp_bilinear_f32",
           "minmax_f32", "merge_chroma", "compose_bgr8")
BLOCK = 256


class CudaUnavailable(RuntimeError):
    """No usable CUDA runtime here (no GPU, or neither pycuda nor CuPy installed)."""


def kernel_path() -> Path:
    """Where ``preprocess.cu`` is installed (package data of ``tdfusion_edge.kernels.cuda``)."""
    return Path(str(importlib.resources.files("tdfusion_edge.kernels.cuda").joinpath(KERNEL_FILE)))


def kernel_source() -> str:
    return kernel_path().read_text()


def find_nvcc() -> str | None:
    """nvcc on PATH, or where JetPack / the CUDA toolkit installs it (not on PATH by default)."""
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def compile_ptx(arch: str, out_dir: str | Path, nvcc: str | None = None) -> Path:
    """Ahead-of-time check with ``nvcc -ptx -arch=<arch>`` (needs no GPU); returns the PTX path."""
    nvcc = nvcc or find_nvcc()
    if not nvcc:
        raise CudaUnavailable("nvcc not found")
    out = Path(out_dir) / f"preprocess_{arch}.ptx"
    proc = subprocess.run([nvcc, "-ptx", f"-arch={arch}", *COMPILE_OPTIONS, str(kernel_path()), "-o", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed for {arch}:\n{proc.stderr}")
    return out


class _PyCudaRuntime:
    """pycuda: driver API with the device's primary context, shared with PyTorch/TensorRT."""

    name = "pycuda"

    def __init__(self, device: int = 0):
        try:
            import pycuda.driver as cuda
            import pycuda.gpuarray as gpuarray
            from pycuda.compiler import SourceModule
        except ImportError as exc:
            raise CudaUnavailable(f"pycuda is not importable ({exc})") from None
        try:
            cuda.init()
            if cuda.Device.count() == 0:
                raise CudaUnavailable("pycuda sees no CUDA device")
            self.ctx = cuda.Device(device).retain_primary_context()
        except cuda.Error as exc:
            raise CudaUnavailable(f"CUDA initialisation failed ({exc})") from None
        self.ctx.push()  # kernels must run on the thread that created the preprocessor
        self.cuda, self.gpuarray = cuda, gpuarray
        try:
            module = SourceModule(kernel_source(), nvcc=find_nvcc() or "nvcc", options=list(COMPILE_OPTIONS),
                                  no_extern_c=True)
            self.fns = {name: module.get_function(name) for name in KERNELS}
        except Exception as exc:  # no nvcc at run time, or a toolkit too old for this GPU
            self.ctx.pop()
            raise CudaUnavailable(f"pycuda could not build {KERNEL_FILE}: {str(exc).strip().splitlines()[0]}") from None

    def launch(self, name: str, grid, block, args) -> None:
        args = [a.gpudata if hasattr(a, "gpudata") else a for a in args]
        self.fns[name](*args, block=tuple(block) + (1,) * (3 - len(block)), grid=tuple(grid) + (1,) * (2 - len(grid)))

    def empty(self, shape, dtype):
        return self.gpuarray.empty(shape, dtype)

    def upload(self, buf, host: np.ndarray) -> None:
        buf.set(np.ascontiguousarray(host))

    def download(self, buf) -> np.ndarray:
        return buf.get()

    def fill(self, buf, value) -> None:
        buf.fill(value)

    def close(self) -> None:
        try:
            self.cuda.Context.synchronize()
        finally:
            self.ctx.pop()


class _CuPyRuntime:
    """CuPy: NVRTC compiles the same source; the runtime API shares the primary context too."""

    name = "cupy"

    def __init__(self, device: int = 0):
        try:
            import cupy
        except ImportError as exc:
            raise CudaUnavailable(f"CuPy is not importable ({exc})") from None
        try:
            if cupy.cuda.runtime.getDeviceCount() == 0:
                raise CudaUnavailable("CuPy sees no CUDA device")
            cupy.cuda.Device(device).use()
        except cupy.cuda.runtime.CUDARuntimeError as exc:
            raise CudaUnavailable(f"CUDA initialisation failed ({exc})") from None
        self.cp = cupy
        try:
            module = cupy.RawModule(code=kernel_source(), options=COMPILE_OPTIONS)
            self.fns = {name: module.get_function(name) for name in KERNELS}  # NVRTC compiles here
        except Exception as exc:
            raise CudaUnavailable(f"CuPy could not build {KERNEL_FILE}: {str(exc).strip().splitlines()[0]}") from None

    def launch(self, name: str, grid, block, args) -> None:
        self.fns[name](tuple(grid), tuple(block), tuple(args))

    def empty(self, shape, dtype):
        return self.cp.empty(shape, dtype)

    def upload(self, buf, host: np.ndarray) -> None:
        buf.set(np.ascontiguousarray(host))

    def download(self, buf) -> np.ndarray:
        return buf.get()

    def fill(self, buf, value) -> None:
        buf.fill(value)

    def close(self) -> None:
        self.cp.cuda.Device().synchronize()


def _runtime(kind: str, device: int):
    if kind in ("pycuda", "auto"):
        try:
            return _PyCudaRuntime(device)
        except CudaUnavailable as exc:
            if kind == "pycuda":
                raise
            first = str(exc)
    if kind in ("cupy", "auto"):
        try:
            return _CuPyRuntime(device)
        except CudaUnavailable as exc:
            if kind == "cupy":
                raise
            raise CudaUnavailable(f"{first}; {exc}") from None
    raise ValueError(f"unknown CUDA runtime {kind!r} (pycuda, cupy or auto)")


def _grid1d(n: int) -> tuple[int]:
    return (max(1, math.ceil(n / BLOCK)),)


class CudaPreprocessor:
    """The CUDA implementation of ``CpuPreprocessor`` (same inputs, same outputs)."""

    def __init__(self, runtime: str = "auto", device: int = 0):
        self.rt = _runtime(runtime, device)
        self.name = f"cuda ({self.rt.name})"
        self._bufs: dict[tuple, object] = {}

    def _buf(self, tag: str, shape, dtype):
        key = (tag, tuple(shape), np.dtype(dtype).str)
        buf = self._bufs.get(key)
        if buf is None:
            if len(self._bufs) > 64:  # frame sizes keep changing: start afresh rather than grow
                self._bufs.clear()
            buf = self._bufs[key] = self.rt.empty(tuple(shape), dtype)
        return buf

    def _upload(self, tag: str, host: np.ndarray):
        buf = self._buf(tag, host.shape, host.dtype)
        self.rt.upload(buf, host)
        return buf

    # -- device-side steps (buffers in, buffers out) -------------------------------------------
    def _luma_chroma_bgr8(self, d_bgr, h: int, w: int, tag: str):
        n = h * w
        d_y, d_c = self._buf(tag + "y", (h, w), np.float32), self._buf(tag + "c", (h, w, 2), np.float32)
        self.rt.launch("luma_chroma_bgr8", _grid1d(n), (BLOCK,), (d_bgr, np.int32(n), d_y, d_c))
        return d_y, d_c

    def _luma_gray8(self, d_gray, h: int, w: int, tag: str):
        d_y = self._buf(tag + "y", (h, w), np.float32)
        self.rt.launch("luma_gray8", _grid1d(h * w), (BLOCK,), (d_gray, np.int32(h * w), d_y))
        return d_y

    def _normalize_u16(self, d_raw, h: int, w: int, tag: str):
        n = h * w
        d_hist = self._buf("hist", (65536,), np.uint32)
        self.rt.fill(d_hist, 0)
        self.rt.launch("histogram_u16", (min(_grid1d(n)[0], 1024),), (BLOCK,), (d_raw, np.int32(n), d_hist))
        lo, hi = percentiles_from_histogram(self.rt.download(d_hist).astype(np.int64))
        d_y = self._buf(tag + "y", (h, w), np.float32)
        if hi <= lo:
            self.rt.fill(d_y, np.float32(0.5))
        else:
            self.rt.launch("normalize_u16", _grid1d(n), (BLOCK,),
                           (d_raw, np.int32(n), np.float32(lo), np.float32(hi - lo), d_y))
        return d_y

    def _warp(self, d_src, src_hw, channels: int, m_inv: np.ndarray, dst_hw, fill: float, tag: str):
        (sh, sw), (dh, dw) = src_hw, dst_hw
        shape = (dh, dw) if channels == 1 else (dh, dw, channels)
        d_dst = self._buf(tag, shape, np.float32)
        m = [np.float32(v) for v in np.asarray(m_inv, np.float32).ravel()]
        grid = (math.ceil(dw / 16), math.ceil(dh / 16))
        self.rt.launch("warp_bilinear_f32", grid, (16, 16),
                       (d_src, np.int32(sw), np.int32(sh), np.int32(channels), d_dst, np.int32(dw), np.int32(dh),
                        *m, np.float32(fill)))
        return d_dst

    def _native_planes(self, raw: np.ndarray, tag: str):
        h, w = raw.shape[:2]
        if raw.dtype == np.uint8 and raw.ndim == 2:
            return self._luma_gray8(self._upload(tag + "raw", raw), h, w, tag), None
        if raw.dtype == np.uint8 and raw.ndim == 3:
            d_y, d_c = self._luma_chroma_bgr8(self._upload(tag + "raw", raw), h, w, tag)
            return d_y, (d_c if is_colour(raw) else None)
        if raw.dtype == np.uint16 and (raw.ndim == 2 or not is_colour(raw)):
            gray = raw if raw.ndim == 2 else np.ascontiguousarray(raw[:, :, 0])
            return self._normalize_u16(self._upload(tag + "raw", gray), h, w, tag), None
        if raw.dtype == np.uint16:  # 16-bit colour: converted on the host like the CPU path does
            from tdfusion_edge.imaging import luma_and_chroma
            y, crcb = luma_and_chroma(raw)
            d_c = None if crcb is None else self._upload(tag + "c", crcb.astype(np.float32))
            return self._upload(tag + "y", y.astype(np.float32)), d_c
        raise ValueError(f"unsupported frame type {raw.dtype} with shape {raw.shape}")

    # -- the CpuPreprocessor interface -----------------------------------------------------------
    def to_planes(self, raw: np.ndarray) -> Planes:
        d_y, d_c = self._native_planes(raw, "in")
        return Planes(self.rt.download(d_y), None if d_c is None else self.rt.download(d_c))

    def planes(self, raw: np.ndarray, m_inv: np.ndarray, dst_hw: tuple[int, int]) -> Planes:
        """Upload, convert and warp on the GPU; one download of the processing-size planes."""
        tag = f"{raw.shape}"
        d_y, d_c = self._native_planes(raw, tag)
        src_hw = raw.shape[:2]
        d_yw = self._warp(d_y, src_hw, 1, m_inv, dst_hw, 0.0, tag + "wy")
        d_cw = None if d_c is None else self._warp(d_c, src_hw, 2, m_inv, dst_hw, float(NEUTRAL), tag + "wc")
        return Planes(self.rt.download(d_yw), None if d_cw is None else self.rt.download(d_cw))

    def merge_chroma(self, a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        if a is None or b is None:
            return b if a is None else a
        d_a, d_b = self._upload("mca", a.astype(np.float32)), self._upload("mcb", b.astype(np.float32))
        d_o = self._buf("mco", a.shape, np.float32)
        self.rt.launch("merge_chroma", _grid1d(a.size), (BLOCK,), (d_a, d_b, np.int32(a.size), d_o))
        return self.rt.download(d_o)

    def minmax_range(self, y: np.ndarray) -> tuple[np.float32, np.float32]:
        return self._minmax(self._upload("cy", y.astype(np.float32)), y.size)

    def _minmax(self, d_y, n: int) -> tuple[np.float32, np.float32]:
        d_k = self._upload("minmax", np.array([0xFFFFFFFF, 0], np.uint32))
        self.rt.launch("minmax_f32", (min(_grid1d(n)[0], 1024),), (BLOCK,), (d_y, np.int32(n), d_k))
        lo, hi = (_key_to_float(int(k)) for k in self.rt.download(d_k))
        return np.float32(lo), np.float32(float(hi) - float(lo))

    def compose(self, y: np.ndarray, crcb: np.ndarray | None, stretch: bool) -> np.ndarray:
        d_y = self._upload("cy", y.astype(np.float32))
        lo, rng = self._minmax(d_y, y.size) if stretch else (np.float32(0), np.float32(1))
        return self._compose(d_y, y.shape, crcb, lo, rng, stretch)

    def compose_bgr8(self, y: np.ndarray, crcb: np.ndarray | None, lo: float = 0.0, rng: float = 1.0,
                     stretch: bool = False) -> np.ndarray:
        """Kernel ``compose_bgr8`` with given stretch parameters (for the twin tests)."""
        return self._compose(self._upload("cy", y.astype(np.float32)), y.shape, crcb, lo, rng, stretch)

    def _compose(self, d_y, shape, crcb, lo, rng, stretch: bool) -> np.ndarray:
        h, w = shape
        d_c = self._upload("cc", crcb.astype(np.float32)) if crcb is not None else d_y  # any pointer will do
        d_o = self._buf("cbgr", (h, w, 3), np.uint8)
        self.rt.launch("compose_bgr8", _grid1d(h * w), (BLOCK,),
                       (d_y, d_c, np.int32(crcb is not None), np.int32(h * w), np.float32(lo), np.float32(rng),
                        np.int32(bool(stretch)), d_o))
        return self.rt.download(d_o)

    # -- one host-in/host-out call per kernel (tests compare them with the twins) ---------------
    def luma_chroma_bgr8(self, bgr: np.ndarray) -> Planes:
        d_y, d_c = self._luma_chroma_bgr8(self._upload("t_raw", bgr), *bgr.shape[:2], "t")
        return Planes(self.rt.download(d_y), self.rt.download(d_c))

    def luma_gray8(self, gray: np.ndarray) -> np.ndarray:
        return self.rt.download(self._luma_gray8(self._upload("t_raw", gray), *gray.shape, "t"))

    def normalize_u16(self, raw: np.ndarray) -> np.ndarray:
        """``histogram_u16`` + host percentiles + ``normalize_u16``."""
        return self.rt.download(self._normalize_u16(self._upload("t_raw", raw), *raw.shape, "t"))

    def warp_bilinear(self, src: np.ndarray, m_inv: np.ndarray, dst_hw, fill: float = 0.0) -> np.ndarray:
        channels = 1 if src.ndim == 2 else src.shape[2]
        d_src = self._upload("t_wsrc", src.astype(np.float32))
        return self.rt.download(self._warp(d_src, src.shape[:2], channels, m_inv, dst_hw, fill, "t_w"))

    def close(self) -> None:
        self._bufs.clear()
        self.rt.close()


def _key_to_float(key: int) -> float:
    """Inverse of the kernel's ordered_key."""
    u = key & 0x7FFFFFFF if key & 0x80000000 else (~key) & 0xFFFFFFFF
    return float(np.array([u], np.uint32).view(np.float32)[0])
