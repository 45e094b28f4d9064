"""Meta step and fusion step at the released sizes, against a meta step written the released way.

Released sizes: F and G of width 16 (2 blocks, 8 heads), fusion crops 256×256, task view 240×320
(MSRS), batch 2 (one pair and its swapped twin), SegFormer-B0 with 9 classes. The released-style
loop keeps T's state on disk: it writes T's state dict before the inner step, steps T in place with
its optimizer, and reads the file back after the outer update, every meta step; ours computes θ_T'
as a new dict with ``functional_call`` and never writes T.

Run: ``pytest benchmarks/bench_meta_step.py`` (CPU or CUDA; ``TDFUSION_BENCH_ROUNDS`` sets the rounds).
Peak memory is the process's resident high-water mark during the step on CPU (freed heap handed
back with ``malloc_trim`` and the mark reset through /proc/self/clear_refs before each step),
``max_memory_allocated`` on CUDA; the baseline before the step (models, data) is printed beside it.
"""
from __future__ import annotations

import ctypes
import gc
import os
import re
import tempfile
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from tdfusion_edge.data.collate import collate_fn, swap_pairs
from tdfusion_edge.data.synthetic_pairs import SyntheticPairs
from tdfusion_edge.models import FusionNet, LossGenerator
from tdfusion_edge.tasks import build_task, to_task_input
from tdfusion_edge.train.ablations import Ablations
from tdfusion_edge.train.data_stream import to_device
from tdfusion_edge.train.fusion_phase import fusion_step
from tdfusion_edge.train.meta_step import (LossSettings, MetaHyper, MetaNets, fusion_objective,
                                           max_normalised_step_, meta_step)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ROUNDS = int(os.environ.get("TDFUSION_BENCH_ROUNDS", "2"))
LR = 1e-4
RESULTS: dict[str, tuple[float, float, float]] = {}


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _rss_peak_mib() -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024


def _rss_now_mib() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def _reset_peak() -> float | None:
    """Start a peak measurement; returns the baseline (MiB) or None where peaks cannot be reset."""
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    gc.collect()
    try:  # hand freed heap back to the OS, or the previous step's memory would look like this one's
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _rss_now_mib()


def _peak_mib() -> float:
    if DEVICE.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _rss_peak_mib()


@pytest.fixture(scope="module")
def setup():
    return make_setup()


def make_setup(device: torch.device = DEVICE, height: int = 240, width: int = 320, crop: int = 256) -> dict:
    """F, G, T (SegFormer-B0, 9 classes), their optimisers and four swapped batches (defaults: released sizes)."""
    torch.manual_seed(0)
    data = SyntheticPairs(length=4, task="seg", height=height, width=width, task_size=(height, width),
                          crop_size=crop, condition="night")
    batches = [to_device(swap_pairs(collate_fn([data[i]])), device) for i in range(4)]
    f, g = FusionNet().to(device).train(), LossGenerator().to(device).train()
    t = build_task("seg", 9).to(device).train()
    f_opt = torch.optim.Adam(f.parameters(), lr=LR)
    t_opt = torch.optim.Adam(t.parameters(), lr=LR)
    return {"batches": batches, "F": f, "G": g, "T": t, "f_opt": f_opt, "t_opt": t_opt,
            "tmp": Path(tempfile.mkdtemp(prefix="tdfusion_bench_"))}


def released_style_meta_step(s: dict, inner: dict, outer: dict) -> float:
    """One meta step as the released train.py does it: T's state round-trips through a file."""
    f, g, t, t_opt = s["F"], s["G"], s["T"], s["t_opt"]
    state_file = s["tmp"] / "interim_sta_DS.pth"
    torch.save(t.state_dict(), state_file)
    for p in list(f.parameters()) + list(g.parameters()):
        p.grad = None
    fused = f(inner["crop_ir"], inner["crop_vis"])
    w = g(inner["crop_ir"], inner["crop_vis"])[:, :1]
    loss_f = fusion_objective(fused, inner["crop_ir"], inner["crop_vis"], w, LossSettings())
    loss_f.backward(create_graph=True, retain_graph=True)
    f_prime = {n: p - LR * p.grad for n, p in f.named_parameters()}  # the released "_meta" parameters
    fused_task = f(inner["ir"], inner["vis"]).detach()  # released: un-updated F, run with a graph, detached
    t_opt.zero_grad()
    t(to_task_input(fused_task), inner["mask"]).backward()
    t_opt.step()  # T itself moves, to be restored from disk below
    for p in g.parameters():
        p.grad = None
    loss_t = t(to_task_input(functional_call(f, f_prime, (outer["ir"], outer["vis"]))), outer["mask"])
    loss_t.backward()
    max_normalised_step_(dict(g.named_parameters()), {n: p.grad for n, p in g.named_parameters()}, LR)
    t.load_state_dict(torch.load(state_file, weights_only=True))
    for p in list(f.parameters()) + list(g.parameters()):
        p.grad = None  # the released code leaves create_graph grads on F; drop them between rounds
    return float(loss_t)


def functional_meta_step(s: dict, inner: dict, outer: dict):
    """One meta step of ours (``train.meta_step``: θ_T' as a new dict, nothing written to disk)."""
    nets = MetaNets(s["F"], s["G"], s["T"], to_task_input)
    return meta_step(nets, inner, outer, MetaHyper(inner_lr=LR, task_lr=LR), "maxnorm", LR, s["t_opt"])


def one_fusion_step(s: dict, batch: dict):
    """One fusion-phase step (F on L_f with G frozen, T on L_t)."""
    return fusion_step(s["F"], s["T"], s["G"], to_task_input, batch, s["f_opt"], s["t_opt"], LossSettings(),
                       Ablations())


def _measure(benchmark, name: str, fn) -> None:
    """Time ``fn`` (after one warm-up call; memory stays with the allocator, as in training), then
    take one more call for its peak memory (trimming the heap first would slow the timed calls)."""
    fn()
    _sync()

    def timed():
        fn()
        _sync()

    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1)
    base = _reset_peak()
    fn()
    _sync()
    peak = _peak_mib() if base is not None else float("nan")
    base = float("nan") if base is None else base
    stats = benchmark.stats.stats
    benchmark.extra_info.update(peak_mib=peak, baseline_mib=base)
    RESULTS[name] = (stats.min, stats.median, peak, base)


@pytest.mark.benchmark(group="meta step (released sizes)")
def test_meta_step_functional(benchmark, setup):
    s = setup
    inner, outer = s["batches"][0], s["batches"][1]
    _measure(benchmark, "meta step, functional (ours)", lambda: functional_meta_step(s, inner, outer))


@pytest.mark.benchmark(group="meta step (released sizes)")
def test_meta_step_released_style(benchmark, setup):
    s = setup
    inner, outer = s["batches"][2], s["batches"][3]
    _measure(benchmark, "meta step, released style (T via disk)",
             lambda: released_style_meta_step(s, inner, outer))


@pytest.mark.benchmark(group="fusion step (released sizes)")
def test_fusion_step(benchmark, setup):
    s = setup
    batch = s["batches"][0]
    _measure(benchmark, "fusion step", lambda: one_fusion_step(s, batch))


def test_report():
    """Print the table and the ratio (run after the three benchmarks above)."""
    if len(RESULTS) < 3:
        pytest.skip("run the whole file to get the comparison")
    print(f"\ndevice {DEVICE}, torch threads {torch.get_num_threads()}, rounds {ROUNDS}")
    for name, (best, median, peak, base) in RESULTS.items():
        print(f"  {name:42s} min {best:7.2f} s  median {median:7.2f} s   peak {peak:7.0f} MiB "
              f"(+{peak - base:.0f} over the {base:.0f} MiB before the step)")
    ours = RESULTS["meta step, functional (ours)"]
    theirs = RESULTS["meta step, released style (T via disk)"]
    print(f"  released-style / functional meta step: time (min) {theirs[0] / ours[0]:.2f}x, "
          f"peak memory {theirs[2] / ours[2]:.2f}x")
