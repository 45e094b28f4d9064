"""Fusion inference latency per backend and size, against the released-style eager module, in one run.

Run: ``pytest benchmarks/bench_inference.py -s --benchmark-columns=min,median,rounds``
(CPU threads: ``BENCH_THREADS``, default 2; sizes: ``BENCH_SIZES="256x256,480x640,768x1024"``).

Every candidate is timed through the API an application uses (``FusionBackend.fuse`` on float32
numpy luminance, host copies included); the baseline is ``ReleasedStyleFusionNet`` (the released
way: LayerNorm via B×HW×C rearrangement, ``F.normalize``, matmul, softmax) under ``torch.no_grad``.
On a GPU, the torch backend is also timed in fp32/fp16 with and without CUDA graphs (the result is
copied to the host inside the timed call, which synchronises CUDA). At the end a table of latencies
and speed-ups over the baseline is printed (and written to ``BENCH_OUT`` as markdown if set).

``test_backend_network_precision``: backend × network × precision rows (FusionNet and TDFusion-lite;
torch fp32, onnxruntime fp32, onnxruntime int8 calibrated on ``BENCH_CALIB`` real pairs) at
``BENCH_MATRIX_SIZES`` (default 240x320,480x640), round-robin over ``BENCH_MATRIX_ROUNDS`` rounds,
each row's speed-up against the released-style eager FusionNet of the same round (table written to
``BENCH_MATRIX_OUT`` as markdown if set).
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
MATRIX_SIZES = [s for s in os.environ.get("BENCH_MATRIX_SIZES", "240x320,480x640").split(",") if s]
MATRIX_ROUNDS = int(os.environ.get("BENCH_MATRIX_ROUNDS", "3"))
MATRIX_NETWORKS = [n for n in os.environ.get("BENCH_NETWORKS", "fusionnet,lite").split(",") if n]
CALIB = Path(os.environ.get("BENCH_CALIB", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"
                                               / "roadscene")))
MATRIX: dict[str, dict] = {}
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
    names += ["lite-torch-cpu", "lite-onnxruntime-cpu"]  # TDFusion-lite beside the full network
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


def released_runner(net, device: str):
    """The released-style eager module on ``device``: callable(ir, vis numpy H×W) → numpy."""
    model = ReleasedStyleFusionNet.from_fusion_net(net).to(device)

    def run(ir, vis):
        with torch.no_grad():
            out = model(torch.from_numpy(ir)[None, None].to(device), torch.from_numpy(vis)[None, None].to(device))
            return out.cpu().numpy()
    return run


def make_runner(name: str, net, cache_dir):
    """The callable(ir, vis numpy H×W) of one candidate of ``_candidates()`` (raises where it is unusable)."""
    from tdfusion_edge.export.backends import OnnxRuntimeBackend, TensorRTBackend, TorchBackend, create_backend

    builders = {
        "released-eager": lambda: released_runner(net, "cpu"),
        "released-eager-cuda": lambda: released_runner(net, "cuda"),
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
        "lite-torch-cpu": lambda: TorchBackend(_lite_net(), "cpu", threads=THREADS).fuse,
        "lite-onnxruntime-cpu": lambda: OnnxRuntimeBackend(_lite_net(), "cpu", cache_dir=cache_dir,
                                                           threads=THREADS).fuse,
    }
    return builders[name]()


def _lite_net():
    """The shipped TDFusion-lite weights (a random-init lite net of the same size if they are missing)."""
    from tdfusion_edge.checkpoints import load_fusion_net, resolve_weights
    from tdfusion_edge.models import LiteFusionNet

    if resolve_weights("lite").is_file():
        return load_fusion_net("lite")
    torch.manual_seed(0)
    return LiteFusionNet().eval()


@pytest.fixture(scope="module")
def runners(net, cache_dir):
    """Candidate name → builder of a callable(ir, vis numpy H×W) for that candidate."""
    made: dict[str, object] = {}

    def get(name):
        if name not in made:
            made[name] = make_runner(name, net, cache_dir)
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


def _network(name: str):
    """The benchmarked network: FusionNet (released weights when present) or TDFusion-lite (its shipped
    weights when present, else random ones: latency does not depend on the values)."""
    if name == "fusionnet":
        return _net()
    try:
        from tdfusion_edge.models import LiteFusionNet
    except ImportError:
        pytest.skip("TDFusion-lite is not in this tree")
    try:
        from tdfusion_edge.checkpoints import load_fusion_net
        return load_fusion_net("lite")
    except Exception:  # weights not shipped yet
        torch.manual_seed(0)
        return LiteFusionNet().eval()


def _matrix_rows(net, cache_dir, size: tuple[int, int]) -> tuple[dict, dict]:
    """Row name → callable, and row name → why it is missing."""
    from tdfusion_edge.export.backends import OnnxRuntimeBackend, OnnxRuntimeInt8Backend, TorchBackend

    rows, missing = {}, {}
    builders = {"torch fp32": lambda: TorchBackend(net, "cpu", threads=THREADS),
                "onnxruntime fp32": lambda: OnnxRuntimeBackend(net, "cpu", cache_dir=cache_dir, threads=THREADS)}
    if CALIB.is_dir():
        builders["onnxruntime int8"] = lambda: OnnxRuntimeInt8Backend(net, calib=CALIB, imgsz=size,
                                                                      cache_dir=cache_dir, threads=THREADS)
    else:
        missing["onnxruntime int8"] = f"no calibration pairs at {CALIB}"
    for name, build in builders.items():
        try:
            backend = build()
        except Exception as exc:  # a refused INT8 gate or a missing runtime is a result to report
            missing[name] = str(exc).splitlines()[0][:160]
            continue
        rows[name] = backend.fuse
        if getattr(backend, "gate_report", None) is not None:
            missing[name + " gate"] = backend.gate_report.describe()
    return rows, missing


@pytest.mark.skipif(MATRIX_ROUNDS < 1, reason="BENCH_MATRIX_ROUNDS=0")
@pytest.mark.parametrize("size", MATRIX_SIZES)
def test_backend_network_precision(cache_dir, size, request):
    """Every (network, backend, precision) once per round in rotating order, with the released-style eager
    FusionNet in the same rounds as the baseline of every ratio."""
    import time

    h, w = (int(v) for v in size.split("x"))
    base_net = _net()
    released = ReleasedStyleFusionNet.from_fusion_net(base_net)

    def baseline(ir, vis):
        with torch.no_grad():
            return released(torch.from_numpy(ir)[None, None], torch.from_numpy(vis)[None, None]).numpy()

    fns, notes = {"released-style eager FusionNet fp32": baseline}, {}
    for network in MATRIX_NETWORKS:
        try:
            net = _network(network)
        except pytest.skip.Exception as exc:
            notes[network] = str(exc)
            continue
        rows, missing = _matrix_rows(net, cache_dir, (h, w))
        fns.update({f"{network} {k}": fn for k, fn in rows.items()})
        notes.update({f"{network} {k}": v for k, v in missing.items()})
    rng = np.random.default_rng(2)
    ir, vis = rng.random((h, w), dtype=np.float32), rng.random((h, w), dtype=np.float32)
    names = list(fns)
    for fn in fns.values():
        fn(ir, vis)                                    # warm-up: first-shape plans and allocations
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(MATRIX_ROUNDS):
        for n in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[n](ir, vis)
            times[n].append(time.perf_counter() - start)
    MATRIX[size] = {"times": times, "notes": notes}
    base = times[names[0]]
    lines = [f"device: {_device_name()}; {MATRIX_ROUNDS} rounds at {size}; load average "
             f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}", "",
             f"| network / backend / precision | {size} min / median (ms) | speed-up vs released eager (median of per-round ratios) |",
             "|---|---|---|"]
    for n in names:
        t = times[n]
        ratio = "—" if n == names[0] else f"{statistics.median(b / a for b, a in zip(base, t)):.1f}×"
        lines.append(f"| {n} | {min(t) * 1e3:.0f} / {statistics.median(t) * 1e3:.0f} | {ratio} |")
    lines += [f"- {k}: {v}" for k, v in notes.items()]
    text = "\n".join(lines)
    print("\n" + text)
    if os.environ.get("BENCH_MATRIX_OUT"):
        with open(os.environ["BENCH_MATRIX_OUT"], "a") as fh:
            fh.write(text + "\n\n")
    try:
        report_table = request.getfixturevalue("bench_report")
        for n in names:
            report_table.add(f"fusion {size} (matrix)", n, statistics.median(times[n]),
                             baseline=names[0], device=_device_name())
    except pytest.FixtureLookupError:
        pass
    assert all(len(t) == MATRIX_ROUNDS for t in times.values())
