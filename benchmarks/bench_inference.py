"""Fusion inference latency per backend and size, against the released-style eager module, in one run.

Run: ``pytest benchmarks/bench_inference.py -s --benchmark-columns=min,median,rounds``
(CPU threads: ``BENCH_THREADS``, default 2; sizes: ``BENCH_SIZES="256x256,480x640,768x1024"``).

Every candidate is timed through the API an application uses (``FusionBackend.fuse`` on float32
numpy luminance, host copies included); the baseline is ``ReleasedStyleFusionNet`` (the released
way: LayerNorm via B×HW×C rearrangement, ``F.normalize``, matmul, softmax) under ``torch.no_grad``.
On a GPU, the torch backend is also timed in fp32/fp16 with and without CUDA graphs (the result is
copied to the host inside the timed call, which synchronises CUDA). At the end a table of latencies
and speed-ups over the baseline is printed (and written to ``BENCH_OUT`` as markdown if set).
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from released_style import ReleasedStyleFusionNet  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
SIZES = [tuple(int(v) for v in s.split("x"))
         for s in os.environ.get("BENCH_SIZES", "256x256,480x640,768x1024").split(",")]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", os.environ.get("TDFUSION_BENCH_ROUNDS", "5")))
WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "ReFusion_IVIF.pth"
RATIO_SIZES = [s for s in os.environ.get("BENCH_RATIO_SIZES", "256x256,480x640,768x1024").split(",") if s]
RATIO_ROUNDS = int(os.environ.get("BENCH_RATIO_ROUNDS", "3"))
RESULTS: dict[tuple[str, str], dict[str, float]] = {}
RATIOS: dict[str, dict[str, float]] = {}

torch.set_num_threads(THREADS)


def _net():
    from tdfusion_edge.checkpoints import load_fusion_net
    from tdfusion_edge.models import FusionNet

    if WEIGHTS.is_file():
        return load_fusion_net(WEIGHTS)
    torch.manual_seed(0)  # same network size, random weights: latency does not depend on the values
    return FusionNet().eval()


def _candidates() -> list[str]:
    from tdfusion_edge.export.backends import available_backends

    names = ["released-eager", "torch-cpu", "auto"]
    if "onnxruntime" in available_backends() or not torch.cuda.is_available():
        names.insert(2, "onnxruntime-cpu")
    if torch.cuda.is_available():
        names += ["released-eager-cuda", "torch-cuda-fp32", "torch-cuda-fp32-graphs", "torch-cuda-fp16",
                  "torch-cuda-fp16-graphs"]
        kinds = available_backends()
        if "onnxruntime" in kinds:
            names += ["onnxruntime-cuda-fp32"]
        if "tensorrt" in kinds:
            names += ["tensorrt-fp32", "tensorrt-fp16"]
    return names


@pytest.fixture(scope="module")
def net():
    return _net()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="module")
def runners(net, cache_dir):
    """Candidate name → builder of a callable(ir, vis numpy H×W) for that candidate."""
    from tdfusion_edge.export.backends import OnnxRuntimeBackend, TensorRTBackend, TorchBackend, create_backend

    made: dict[str, object] = {}

    def released(device):
        model = ReleasedStyleFusionNet.from_fusion_net(net).to(device)

        def run(ir, vis):
            with torch.no_grad():
                out = model(torch.from_numpy(ir)[None, None].to(device), torch.from_numpy(vis)[None, None].to(device))
                return out.cpu().numpy()
        return run

    builders = {
        "released-eager": lambda: released("cpu"),
        "released-eager-cuda": lambda: released("cuda"),
        "torch-cpu": lambda: TorchBackend(net, "cpu", threads=THREADS).fuse,
        "onnxruntime-cpu": lambda: OnnxRuntimeBackend(net, "cpu", cache_dir=cache_dir, threads=THREADS).fuse,
        "auto": lambda: create_backend("auto", net=net, cache_dir=cache_dir, threads=THREADS).fuse,
        "torch-cuda-fp32": lambda: TorchBackend(net, "cuda", cuda_graphs=False).fuse,
        "torch-cuda-fp32-graphs": lambda: TorchBackend(net, "cuda", cuda_graphs=True).fuse,
        "torch-cuda-fp16": lambda: TorchBackend(net, "cuda", half=True, cuda_graphs=False).fuse,
        "torch-cuda-fp16-graphs": lambda: TorchBackend(net, "cuda", half=True, cuda_graphs=True).fuse,
        "onnxruntime-cuda-fp32": lambda: OnnxRuntimeBackend(net, "cuda", cache_dir=cache_dir).fuse,
        "tensorrt-fp32": lambda: TensorRTBackend(net, "cuda", cache_dir=cache_dir).fuse,
        "tensorrt-fp16": lambda: TensorRTBackend(net, "cuda", half=True, cache_dir=cache_dir).fuse,
    }

    def get(name):
        if name not in made:
            made[name] = builders[name]()
        return made[name]
    return get


def _device_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu} ({os.cpu_count()} logical CPUs, {THREADS} threads){gpu}"


def _baseline(name: str) -> str:
    return "released-eager-cuda" if "cuda" in name or name.startswith("tensorrt") else "released-eager"


def _round_robin_table() -> list[str]:
    sizes = list(RATIOS)
    names = [n for n in _candidates() if all(n in RATIOS[s]["times"] for s in sizes)]
    rounds = {RATIOS[s]["rounds"] for s in sizes}
    lines = [f"| backend ({'/'.join(map(str, sorted(rounds)))} rounds) | "
             + " | ".join(f"{s} min / median (ms)" for s in sizes) + " | "
             + " | ".join(f"{s} speed-up (median of per-round ratios)" for s in sizes) + " |",
             "|---|" + "---|" * (2 * len(sizes))]
    for name in names:
        cells, ratios = [], []
        for s in sizes:
            t = RATIOS[s]["times"][name]
            cells.append(f"{min(t) * 1e3:.0f} / {statistics.median(t) * 1e3:.0f}")
            base = RATIOS[s]["times"].get(_baseline(name))
            ratios.append("—" if name.startswith("released") or not base else
                          f"{statistics.median(b / a for b, a in zip(base, t)):.1f}×")
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    lines.append("")
    lines.append("auto = " + "; ".join(f"{s}: {RATIOS[s]['auto']}" for s in sizes))
    return lines


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if not RESULTS and not RATIOS:
        return
    sizes = sorted({s for s, _ in RESULTS}, key=lambda s: [int(v) for v in s.split("x")])
    names = [n for n in _candidates() if any((s, n) in RESULTS for s in sizes)]
    lines = [f"device: {_device_name()}; torch {torch.__version__}", "",
             "| backend | " + " | ".join(f"{s} min / median (ms)" for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for name in names:
        cells = []
        for s in sizes:
            r = RESULTS.get((s, name))
            cells.append("—" if r is None else f"{r['min'] * 1e3:.0f} / {r['median'] * 1e3:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| speed-up vs released-eager (min, median) | " + " | ".join(sizes) + " |",
              "|---|" + "---|" * len(sizes)]
    for name in names:
        if name.startswith("released-eager"):
            continue
        base_name = _baseline(name)
        cells = []
        for s in sizes:
            r, base = RESULTS.get((s, name)), RESULTS.get((s, base_name))
            cells.append("—" if not (r and base) else
                         f"{base['min'] / r['min']:.1f}× / {base['median'] / r['median']:.1f}×")
        lines.append(f"| {name} (vs {base_name}) | " + " | ".join(cells) + " |")
    if RATIOS:
        lines += ["", "round-robin (every backend once per round, rotating order: same moments of machine load):", ""]
        lines += _round_robin_table()
    text = "\n".join(lines)
    print("\n" + text)
    if os.environ.get("BENCH_OUT"):
        Path(os.environ["BENCH_OUT"]).write_text(text + "\n")


@pytest.mark.parametrize("size", [f"{h}x{w}" for h, w in SIZES])
@pytest.mark.parametrize("name", _candidates())
def test_fusion_latency(benchmark, runners, size, name, request):
    h, w = (int(v) for v in size.split("x"))
    rng = np.random.default_rng(0)
    ir = rng.random((h, w), dtype=np.float32)
    vis = rng.random((h, w), dtype=np.float32)
    run = runners(name)
    benchmark.group = f"fusion {size}"
    benchmark.extra_info.update(backend=name, size=size, threads=THREADS)
    out = benchmark.pedantic(run, args=(ir, vis), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert np.asarray(out).reshape(h, w).shape == (h, w)
    times = benchmark.stats.stats.data
    RESULTS[(size, name)] = {"min": min(times), "median": statistics.median(times)}
    try:  # the session-wide table of benchmarks/conftest.py, when it is there
        report_table = request.getfixturevalue("bench_report")
    except pytest.FixtureLookupError:
        return
    report_table.add(f"fusion {size} (fuse call)", name, statistics.mean(times), baseline=_baseline(name),
                     device=_device_name())


@pytest.mark.skipif(RATIO_ROUNDS < 1, reason="BENCH_RATIO_ROUNDS=0")
@pytest.mark.parametrize("size", RATIO_SIZES)
def test_round_robin_speedups(runners, size):
    """The headline ratios: every candidate runs once per round, in rotating order, so all see the same load."""
    import time

    h, w = (int(v) for v in size.split("x"))
    rng = np.random.default_rng(1)
    ir, vis = rng.random((h, w), dtype=np.float32), rng.random((h, w), dtype=np.float32)
    names = _candidates()
    fns = {n: runners(n) for n in names}
    for fn in fns.values():                             # warm-up (first-shape plans, CUDA graphs)
        fn(ir, vis)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(RATIO_ROUNDS):
        for n in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[n](ir, vis)
            times[n].append(time.perf_counter() - start)
    auto = getattr(fns["auto"], "__self__", None)
    RATIOS[size] = {"rounds": RATIO_ROUNDS, "auto": auto.describe() if auto is not None else "auto",
                    "times": times}
    assert all(len(t) == RATIO_ROUNDS for t in times.values())
