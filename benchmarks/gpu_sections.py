"""The sections of the GPU check; ``gpu_check.py`` runs each in its own process with a time limit.

Each section reuses the benchmark suites' own code (``bench_kernels`` cases, ``bench_inference``
runners, ``bench_meta_step`` steps, ``apps.cuda_kernels`` against ``apps.preprocess``), times it
here with CUDA synchronised at the end of every timed round, and records one row per measurement
in a ``SectionFile``, which is rewritten after every row so that a section stopped at its limit
still leaves what it measured. A row that fails records the error and the section goes on.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # appended: a module name here must not shadow another one
    sys.path.append(str(BENCH_DIR))

NO_CUDA = "needs CUDA (none in this run)"


@dataclass
class SectionFile:
    """Rows and info of one section, saved as JSON after every change."""

    path: Path
    name: str
    rows: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def add(self, row: dict) -> dict:
        row.setdefault("status", "ok")
        row.setdefault("reason", None)
        self.rows.append(row)
        self.save()
        label = " ".join(str(row[k]) for k in ("kernel", "backend", "name", "size", "pass", "impl") if k in row)
        value = next((f"{row[k]:.4g} {k.rsplit('_', 1)[1]}" for k in ("mean_ms", "median_ms", "median_s", "gpu_ms")
                      if row.get(k) is not None), "")
        print(f"  [{self.name}] {label}: {row['status']} {value}"
              + (f" ({row['reason']})" if row["reason"] else ""), flush=True)
        return row

    def save(self, **extra) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rows": self.rows, "info": self.info, **extra}, default=str))
        tmp.replace(self.path)


@dataclass
class Ctx:
    """What a section runs with: the device, tiny sizes or real ones, and its soft deadline."""

    device: torch.device
    dry_run: bool
    deadline: float  # time.perf_counter() value after which no new row starts

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def error_reason(exc: BaseException) -> str:
    """The exception's type and first line (pytest's Skipped included)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int, rounds: int,
               round_s: float, deadline: float) -> dict:
    """Per-call seconds of ``fn``: rounds of n calls (n sized so a round lasts ``round_s``), CUDA
    synchronised once per round, so a short kernel's time is not its launch-and-wait latency."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    one = time.perf_counter() - start
    iters = max(1, min(1000, int(round_s / max(one, 1e-7))))
    times = []
    for _ in range(rounds):
        if times and time.perf_counter() > deadline:
            break
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        times.append((time.perf_counter() - start) / iters)
    return {"mean_ms": 1e3 * statistics.fmean(times), "median_ms": 1e3 * statistics.median(times),
            "min_ms": 1e3 * min(times), "rounds": len(times), "iters": iters}


def _out_of_time(ctx: Ctx, sec: SectionFile, row: dict) -> bool:
    if ctx.time_left() > 0:
        return False
    sec.add({**row, "status": "skipped", "reason": "section time budget used up"})
    return True


# -- device -----------------------------------------------------------------------------------------
def run_device(ctx: Ctx, sec: SectionFile) -> None:
    """What the numbers are measured on, and the copy bandwidth every GB/s is compared with."""
    info = sec.info
    info.update(kind=ctx.device.type, torch=torch.__version__, python=platform.python_version(),
                cuda=torch.version.cuda, hostname=platform.node())
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError as exc:
        info["triton"] = None
        info["triton_missing"] = error_reason(exc)
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(name=torch.cuda.get_device_name(ctx.device), capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1))
        info["driver"] = _nvidia_smi("driver_version")
    else:
        info["name"] = f"CPU: {_cpu_name()} ({torch.get_num_threads()} torch threads)"
    n = (1 << 30) if ctx.cuda else (8 << 20)  # 1 GiB: many times the L2, so the copy streams through HBM
    src = torch.empty(n, dtype=torch.uint8, device=ctx.device).fill_(1)
    dst = torch.empty_like(src)
    t = time_calls(lambda: dst.copy_(src), ctx.device, warmup=3, rounds=10 if ctx.cuda else 3,
                   round_s=0.05, deadline=ctx.deadline)
    nbytes = 2 * n  # read + written, the convention of every GB/s in this check
    row = sec.add({"name": "copy", "size": f"{n >> 20} MiB", "bytes": nbytes, **t,
                   "gbps": nbytes / (t["median_ms"] * 1e-3) / 1e9})
    info["copy_gbps"] = row["gbps"]
    del src, dst


def _nvidia_smi(field_name: str) -> str | None:
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- kernels ----------------------------------------------------------------------------------------
def kernel_cases(dry_run: bool) -> list[tuple[str, object, str]]:
    """(kernel, case, size label): bench_kernels' real sizes, or tiny ones for the dry run."""
    import bench_kernels as bk

    fusion = [(2, 1, 32, 32)] if dry_run else [bk.FUSION_SHAPE]
    mdta = [(16, 16, 16)] if dry_run else list(bk.MDTA_CASES)
    ln = [(2, 16, 16, 16)] if dry_run else list(bk.LN_SHAPES)
    cases = [("fusion_loss", s, f"{s[0]}×{s[2]}×{s[3]}") for s in fusion]
    cases += [("mdta", c, f"w{c[0]} {bk.MDTA_BATCH}×{c[1]}×{c[2]}") for c in mdta]
    cases += [("layernorm", s, f"c{s[1]} {s[0]}×{s[2]}×{s[3]}") for s in ln]
    return cases


def run_kernels(ctx: Ctx, sec: SectionFile) -> None:
    """Every kernel, size and pass: eager and Triton first (the targets), torch.compile after."""
    import bench_kernels as bk

    builders = {"fusion_loss": lambda fn, mode, case: bk.fusion_loss_case(fn, mode, case, ctx.device),
                "mdta": lambda fn, mode, case: bk.mdta_case(fn, mode, case, ctx.device),
                "layernorm": lambda fn, mode, case: bk.layernorm_case(fn, mode, case, ctx.device)}
    try:
        import triton  # noqa: F401
        no_triton = None
    except ImportError as exc:
        no_triton = f"triton not importable ({error_reason(exc)})"
    sec.info.update(sizes="bench_kernels real sizes" if not ctx.dry_run else "dry run: tiny",
                    timing="mean of rounds ≥ 20 ms of back-to-back calls, CUDA synchronised per round")
    for impls in (("eager", "triton"), ("compile",)):
        for kernel, case, size in kernel_cases(ctx.dry_run):
            for mode in bk.MODES:
                for impl in impls:
                    row = {"kernel": kernel, "size": size, "pass": mode, "impl": impl}
                    if impl == "compile" and mode == "meta":
                        sec.add({**row, "status": "skipped", "reason": "torch.compile has no double backward"})
                        continue
                    if impl != "eager" and not ctx.cuda:
                        sec.add({**row, "status": "skipped", "reason": NO_CUDA})
                        continue
                    if impl == "triton" and no_triton:
                        sec.add({**row, "status": "skipped", "reason": no_triton})
                        continue
                    if _out_of_time(ctx, sec, row):
                        continue
                    try:
                        start = time.perf_counter()
                        group, run, nbytes = builders[kernel](bk.kernel_impl(kernel, impl), mode, case)
                        t = time_calls(run, ctx.device, warmup=3 if ctx.cuda else 1, rounds=20 if ctx.cuda else 2,
                                       round_s=0.02 if ctx.cuda else 0.0, deadline=ctx.deadline)
                        sec.add({**row, "group": group, "bytes": nbytes, **t,
                                 "gbps": nbytes / (t["mean_ms"] * 1e-3) / 1e9,
                                 "first_call_s": round(time.perf_counter() - start, 2)})
                        del run
                    except Exception as exc:  # noqa: BLE001 - a failing row is recorded, the rest goes on
                        sec.add({**row, "status": "error", "reason": error_reason(exc)})


# -- meta step --------------------------------------------------------------------------------------
def run_meta(ctx: Ctx, sec: SectionFile) -> None:
    """bench_meta_step's steps at the released sizes: ours (Triton and reference kernels), the
    released-style loop, the fusion step; seconds per step and peak memory during one step."""
    import bench_meta_step as bm

    if bm.DEVICE != ctx.device:
        raise RuntimeError(f"bench_meta_step measures on {bm.DEVICE}, this section on {ctx.device}")
    sizes = dict(height=32, width=48, crop=32) if ctx.dry_run else {}
    start = time.perf_counter()
    s = bm.make_setup(ctx.device, **sizes)
    h, w, c = sizes.get("height", 240), sizes.get("width", 320), sizes.get("crop", 256)
    sec.info.update(sizes=f"batch 2 (pair + swapped twin), crops {c}×{c}, task view {h}×{w}, SegFormer-B0 9 classes",
                    setup_s=round(time.perf_counter() - start, 2))
    b = s["batches"]
    steps = [("meta step, functional", "triton", lambda: bm.functional_meta_step(s, b[0], b[1])),
             ("meta step, functional", "reference", lambda: bm.functional_meta_step(s, b[0], b[1])),
             ("meta step, released style (T via disk)", "auto", lambda: bm.released_style_meta_step(s, b[2], b[3])),
             ("fusion step", "auto", lambda: bm.one_fusion_step(s, b[0]))]
    rounds = 3 if ctx.cuda else 1
    before = os.environ.get("TDFUSION_KERNELS")
    try:
        for name, kernels, fn in steps:
            row = {"name": name, "kernels": kernels if kernels != "auto" else
                   ("auto (triton)" if ctx.cuda else "auto (reference)")}
            if kernels == "triton" and not ctx.cuda:
                sec.add({**row, "status": "skipped", "reason": NO_CUDA})
                continue
            if _out_of_time(ctx, sec, row):
                continue
            os.environ["TDFUSION_KERNELS"] = kernels  # read by the kernels' dispatch at every call
            try:
                sec.add({**row, **_time_step(bm, ctx, fn, rounds)})
            except Exception as exc:  # noqa: BLE001
                sec.add({**row, "status": "error", "reason": error_reason(exc)})
    finally:
        if before is None:
            os.environ.pop("TDFUSION_KERNELS", None)
        else:
            os.environ["TDFUSION_KERNELS"] = before
        shutil.rmtree(s["tmp"], ignore_errors=True)  # the released-style loop's state file


def _time_step(bm, ctx: Ctx, fn, rounds: int) -> dict:
    """One warm-up step, ``rounds`` timed steps, then one step for the peak (bench_meta_step's way);
    the dry run takes one step, timed and measured at once, to stay short."""
    if ctx.dry_run:
        base = bm._reset_peak()
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        return {"min_s": took, "median_s": took, "rounds": 1,
                "peak_mib": bm._peak_mib() if base is not None else None, "base_mib": base}
    fn()
    sync(ctx.device)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        sync(ctx.device)
        times.append(time.perf_counter() - start)
        if ctx.time_left() < 0:
            break
    base = bm._reset_peak()
    fn()
    sync(ctx.device)
    peak = bm._peak_mib() if base is not None else None
    return {"min_s": min(times), "median_s": statistics.median(times), "rounds": len(times),
            "peak_mib": peak, "base_mib": base}


# -- inference --------------------------------------------------------------------------------------
CUDA_CANDIDATES = ("released-eager-cuda", "torch-cuda-fp32", "torch-cuda-fp32-graphs", "torch-cuda-fp16",
                   "torch-cuda-fp16-graphs", "onnxruntime-cuda-fp32", "tensorrt-fp32", "tensorrt-fp16")
CPU_CANDIDATES = ("released-eager",)  # the dry run's stand-in, so the code path runs


def run_inference(ctx: Ctx, sec: SectionFile) -> None:
    """bench_inference's runners on CUDA (fuse call on numpy, host copies included) against the
    released-style eager module on the same device, with the output's distance from it."""
    import tempfile

    import bench_inference as bi

    torch.set_num_threads(max(1, os.cpu_count() or 1) if ctx.cuda else 1)  # bench_inference pins 2 for CPU rows
    net = bi._net()
    sec.info["weights"] = ("released ReFusion_IVIF.pth" if bi.WEIGHTS.is_file()
                           else "random init (released checkpoint absent; latency does not depend on the values)")
    sizes = [(32, 32), (32, 48)] if ctx.dry_run else list(bi.SIZES)
    names = list(CUDA_CANDIDATES) if ctx.cuda else list(CPU_CANDIDATES) + list(CUDA_CANDIDATES)
    sec.info["baseline"] = "released-eager-cuda" if ctx.cuda else "released-eager"
    cache = Path(tempfile.mkdtemp(prefix="gpu_check_cache_"))  # exported ONNX, engines: this run's only
    try:
        _inference_rows(ctx, sec, bi, net, names, sizes, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _inference_rows(ctx: Ctx, sec: SectionFile, bi, net, names: list[str], sizes, cache: Path) -> None:
    """One row per candidate and size; a candidate that cannot be built here is skipped with the reason."""
    from tdfusion_edge.export.errors import BackendUnavailable
    from tdfusion_edge.export.trt_import import TensorRTUnavailable

    reference: dict[tuple[int, int], np.ndarray] = {}
    for name in names:
        rows = [{"backend": name, "size": f"{h}×{w}"} for h, w in sizes]
        if "cuda" in name or name.startswith("tensorrt"):
            if not ctx.cuda:
                for row in rows:
                    sec.add({**row, "status": "skipped", "reason": NO_CUDA})
                continue
        try:
            start = time.perf_counter()
            run = bi.make_runner(name, net, cache)
            build_s = time.perf_counter() - start
        except (BackendUnavailable, TensorRTUnavailable, ImportError) as exc:
            for row in rows:
                sec.add({**row, "status": "skipped", "reason": error_reason(exc)})
            continue
        except Exception as exc:  # noqa: BLE001
            for row in rows:
                sec.add({**row, "status": "error", "reason": error_reason(exc)})
            continue
        for (h, w), row in zip(sizes, rows):
            if _out_of_time(ctx, sec, row):
                continue
            rng = np.random.default_rng(0)
            ir, vis = rng.random((h, w), dtype=np.float32), rng.random((h, w), dtype=np.float32)
            try:
                out = np.asarray(run(ir, vis), np.float32).reshape(h, w)
                reference.setdefault((h, w), out)  # the baseline runs first
                diff = float(np.abs(out - reference[(h, w)]).max())
                t = _time_host_calls(lambda: run(ir, vis), rounds=20 if ctx.cuda else 2, deadline=ctx.deadline)
                sec.add({**row, **t, "max_abs_diff": diff, "build_s": round(build_s, 2)})
            except Exception as exc:  # noqa: BLE001
                sec.add({**row, "status": "error", "reason": error_reason(exc)})
        del run
        if ctx.cuda:
            torch.cuda.empty_cache()


def _time_host_calls(fn, rounds: int, deadline: float) -> dict:
    """Seconds of single calls that return host arrays (so each call has waited for the GPU)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return {"min_ms": 1e3 * min(times), "median_ms": 1e3 * statistics.median(times), "rounds": len(times)}


# -- CUDA pre-processing ----------------------------------------------------------------------------
def run_preprocess(ctx: Ctx, sec: SectionFile) -> None:
    """Each kernel of kernels/cuda/preprocess.cu (through apps.cuda_kernels) against its NumPy twin
    at camera sizes: bit-equality and host-in/host-out time."""
    from tdfusion_edge.apps import cuda_kernels
    from tdfusion_edge.apps import preprocess as pp

    gpu, why = None, None
    if not ctx.cuda:
        why = NO_CUDA
    else:
        try:
            gpu = cuda_kernels.CudaPreprocessor("auto")
            sec.info["runtime"] = gpu.name
        except cuda_kernels.CudaUnavailable as exc:
            why = f"no CUDA runtime for preprocess.cu: {exc}"
    sec.info["gpu_skipped"] = why
    frame, thermal, grid = ((48, 64), (24, 32), (32, 48)) if ctx.dry_run else ((1080, 1920), (512, 640), (480, 640))
    rng = np.random.default_rng(7)
    bgr = rng.integers(0, 256, (*frame, 3), dtype=np.uint8)
    raw16 = rng.normal(7500, 600, thermal).clip(0, 65535).astype(np.uint16)
    yf = rng.uniform(0, 255, frame).astype(np.float32)
    cf = rng.uniform(0, 255, (*frame, 2)).astype(np.float32)
    a, b = (rng.uniform(0, 255, (*grid, 2)).astype(np.float32) for _ in range(2))
    y = rng.uniform(-0.2, 1.3, grid).astype(np.float32)
    hom = np.array([[1.02, 0.01, -3.0], [0.005, 1.01, 2.0], [1e-5, 2e-5, 1.0]])
    m_vis = pp.sampling_matrix(pp.letterbox_matrix(frame, grid))
    m_ir = pp.sampling_matrix(pp.letterbox_matrix(thermal, grid) @ hom)
    lo, rng_ = pp.minmax_range(y)
    cpu = pp.CpuPreprocessor()

    def twin_normalize(raw):
        return pp.normalize_u16(raw, *pp.percentiles_from_histogram(pp.histogram_u16(raw)))

    def s(shape):
        return "×".join(map(str, shape))

    g = gpu  # the lambdas below are only called when gpu is set
    cases = [
        ("luma_chroma_bgr8", s(bgr.shape), lambda: pp.luma_chroma_bgr8(bgr), lambda: g.luma_chroma_bgr8(bgr)),
        ("luma_gray8", s(frame), lambda: pp.luma_gray8(bgr[:, :, 0]), lambda: g.luma_gray8(bgr[:, :, 0])),
        ("histogram_u16 + normalize_u16", s(thermal), lambda: twin_normalize(raw16), lambda: g.normalize_u16(raw16)),
        ("warp_bilinear_f32 (1 ch)", f"{s(frame)} → {s(grid)}", lambda: pp.warp_bilinear(yf, m_vis, grid, 0.0),
         lambda: g.warp_bilinear(yf, m_vis, grid, 0.0)),
        ("warp_bilinear_f32 (2 ch)", f"{s(frame)} → {s(grid)}", lambda: pp.warp_bilinear(cf, m_vis, grid, 128.0),
         lambda: g.warp_bilinear(cf, m_vis, grid, 128.0)),
        ("merge_chroma", s(a.shape), lambda: pp.merge_chroma(a, b), lambda: g.merge_chroma(a, b)),
        ("minmax_f32", s(grid), lambda: pp.minmax_range(y), lambda: g.minmax_range(y)),
        ("compose_bgr8 (chroma, stretch)", s(grid), lambda: pp.compose_bgr8(y, a, lo, rng_, True),
         lambda: g.compose_bgr8(y, a, lo, rng_, True)),
        ("planes: BGR8 frame → grid", f"{s(bgr.shape)} → {s(grid)}", lambda: cpu.planes(bgr, m_vis, grid),
         lambda: g.planes(bgr, m_vis, grid)),
        ("planes: 16-bit thermal → grid", f"{s(thermal)} → {s(grid)}", lambda: cpu.planes(raw16, m_ir, grid),
         lambda: g.planes(raw16, m_ir, grid)),
    ]
    cpu_dev = torch.device("cpu")
    rounds = 2 if ctx.dry_run else 10
    try:
        for kernel, size, twin, cuda in cases:
            row = {"kernel": kernel, "size": size}
            if _out_of_time(ctx, sec, row):
                continue
            try:
                row.update(numpy_ms=time_calls(twin, cpu_dev, warmup=1, rounds=rounds, round_s=0.0,
                                               deadline=ctx.deadline)["median_ms"])
                if gpu is None:
                    sec.add({**row, "status": "skipped", "reason": why})
                    continue
                equal, diff = _same(cuda(), twin())
                t = time_calls(cuda, cpu_dev, warmup=2, rounds=rounds, round_s=0.0, deadline=ctx.deadline)
                sec.add({**row, "gpu_ms": t["median_ms"], "vs_numpy": row["numpy_ms"] / t["median_ms"],
                         "equal": equal, "max_abs_diff": diff})
            except Exception as exc:  # noqa: BLE001
                sec.add({**row, "status": "error", "reason": error_reason(exc)})
    finally:
        if gpu is not None:
            gpu.close()


def _same(ours, twin) -> tuple[bool, float]:
    """Bit-equality of two results (arrays, Planes or tuples) and their largest difference."""
    def parts(x):
        if hasattr(x, "y"):
            return [x.y, x.crcb]
        return list(x) if isinstance(x, tuple) else [x]
    equal, diff = True, 0.0
    for p, q in zip(parts(ours), parts(twin)):
        if p is None or q is None:
            equal &= p is None and q is None
            continue
        p, q = np.asarray(p), np.asarray(q)
        if p.shape != q.shape:
            return False, float("inf")
        equal &= bool(np.array_equal(p, q))
        if p.size:
            diff = max(diff, float(np.abs(p.astype(np.float64) - q.astype(np.float64)).max()))
    return equal, diff


SECTION_FUNCS = {"device": run_device, "kernels": run_kernels, "meta": run_meta, "inference": run_inference,
                 "preprocess": run_preprocess}


def run_section(name: str, out_file: Path, dry_run: bool, soft_budget_s: float) -> int:
    """Run one section in this process and write its rows to ``out_file``; 0 unless the section crashed."""
    start = time.perf_counter()
    dev = torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")
    sec = SectionFile(Path(out_file), name)
    ctx = Ctx(dev, dry_run, start + soft_budget_s)
    try:
        SECTION_FUNCS[name](ctx, sec)
    except BaseException as exc:  # noqa: BLE001 - also pytest's Skipped; recorded for the parent
        sec.save(status="error", reason=error_reason(exc), traceback=traceback.format_exc()[-3000:],
                 wall_s=time.perf_counter() - start)
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        return 1
    sec.save(status="ok", wall_s=time.perf_counter() - start)
    return 0
