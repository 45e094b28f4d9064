"""Kernels against eager PyTorch: fusion loss, MDTA attention, channel LayerNorm; three passes each.

Passes: ``fwd`` (forward with inputs that require grad, as in training), ``fwd_bwd`` (forward +
first-order gradients), ``meta`` (the meta step's shape: gradients with ``create_graph=True``,
then the gradients of a linear function of those, i.e. the double backward).
Rows: ``eager`` (the reference, the baseline of every ratio), ``compile`` (``torch.compile`` of
the reference; first order only, it does not do double backward) and ``triton``; the last two
only on CUDA. Sizes: fusion loss batch 2 at 256×256; MDTA batch 2, 8 heads, widths 16 and 32, at
256×256 and 480×640; LayerNorm batch 2, 16 and 32 channels at 256×256. Without CUDA the eager rows run at reduced sizes so the suite does not rot
(``TDFUSION_BENCH_FULL=1`` restores the real sizes).

Bandwidth is bytes / time with bytes = the traffic of the fused kernels (each tensor a pass reads
or writes counted once), the same number for every row of a group.

Run: ``pytest benchmarks/bench_kernels.py --benchmark-only`` (``TDFUSION_BENCH_ROUNDS`` sets rounds).
"""
from __future__ import annotations

import os

import pytest
import torch

from tdfusion_edge.kernels import (
    fusion_loss_reference,
    layer_norm_channels_reference,
    mdta_attention_reference,
)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
FULL = CUDA or os.environ.get("TDFUSION_BENCH_FULL") == "1"
ROUNDS = int(os.environ.get("TDFUSION_BENCH_ROUNDS", "50" if CUDA else "3"))
WARMUP = 3 if CUDA else 1
MODES = ("fwd", "fwd_bwd", "meta")
IMPLS = ("eager", "compile", "triton")

FUSION_SHAPE = (2, 1, 256, 256) if FULL else (2, 1, 64, 64)
MDTA_CASES = ([(16, 256, 256), (32, 256, 256), (16, 480, 640), (32, 480, 640)] if FULL
              else [(16, 32, 32), (32, 32, 32)])
MDTA_BATCH, MDTA_HEADS = 2, 8
LN_SHAPES = [(2, 16, 256, 256), (2, 32, 256, 256)] if FULL else [(2, 16, 32, 32), (2, 32, 32, 32)]
_REFERENCES = {"fusion_loss": fusion_loss_reference, "mdta": mdta_attention_reference,
               "layernorm": layer_norm_channels_reference}

_COMPILED: dict[str, object] = {}


def _impl(kernel: str, impl: str):
    if impl != "eager" and not CUDA:
        pytest.skip("torch.compile and Triton rows are measured on CUDA only")
    if impl == "triton":
        pytest.importorskip("triton")
    return kernel_impl(kernel, impl)


def kernel_impl(kernel: str, impl: str):
    """The callable of one row: ``eager`` (the reference), ``compile`` (cached per kernel) or ``triton``."""
    reference = _REFERENCES[kernel]
    if impl == "eager":
        return reference
    if impl == "compile":
        if kernel not in _COMPILED:
            _COMPILED[kernel] = torch.compile(reference, dynamic=False)
        return _COMPILED[kernel]
    if kernel == "fusion_loss":
        from tdfusion_edge.kernels.fusion_loss_triton import fusion_loss_triton
        return fusion_loss_triton
    if kernel == "layernorm":
        from tdfusion_edge.kernels.layernorm_triton import layer_norm_channels_triton
        return layer_norm_channels_triton
    from tdfusion_edge.kernels.mdta_triton import mdta_attention_triton
    return mdta_attention_triton


def _measure(benchmark, bench_report, bench_sync, bench_device_name, group, impl, run, nbytes):
    def timed():
        run()
        bench_sync(DEVICE)

    for _ in range(WARMUP):
        timed()
    benchmark.group = group
    benchmark.extra_info["bytes"] = nbytes
    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    if benchmark.stats is not None:
        bench_report.add(group, impl, benchmark.stats.stats.mean, nbytes,
                         device=bench_device_name(DEVICE))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_fusion_loss(benchmark, bench_report, bench_sync, bench_device_name, mode, impl):
    if impl == "compile" and mode == "meta":
        pytest.skip("torch.compile does not support double backward")
    group, run, nbytes = fusion_loss_case(_impl("fusion_loss", impl), mode)
    _measure(benchmark, bench_report, bench_sync, bench_device_name, group, impl, run, nbytes)


def fusion_loss_case(fn, mode: str, shape=FUSION_SHAPE, device=DEVICE):
    """(group, run, bytes) of one fusion-loss row; ``fn`` is checked against the reference first."""
    gen = torch.Generator().manual_seed(0)
    fused, ir, vis, w = (torch.rand(shape, generator=gen).to(device) for _ in range(4))
    u_f, u_w = (torch.randn(shape, generator=gen).to(device) for _ in range(2))
    fused.requires_grad_(True)
    w.requires_grad_(True)  # the loss generator's weights: the meta step differentiates them
    if fn is not fusion_loss_reference:
        torch.testing.assert_close(fn(fused, ir, vis, w), fusion_loss_reference(fused, ir, vis, w),
                                   rtol=1e-4, atol=1e-6)

    def run():
        loss = fn(fused, ir, vis, w)
        if mode == "fwd_bwd":
            torch.autograd.grad(loss, (fused, w))
        elif mode == "meta":
            g_f, g_w = torch.autograd.grad(loss, (fused, w), create_graph=True)
            torch.autograd.grad((g_f, g_w), (fused, w), (u_f, u_w))

    px = shape[0] * shape[2] * shape[3]
    e = fused.element_size()
    fwd = 4 * px * e + px  # fused, ir, vis, w in; the int8 sign/winner code out
    bwd = 4 * px * e + px + 2 * px * e  # the same in plus the code; dL/dfused, dL/dw out
    dd = 6 * px * e + 2 * px * e  # inputs and the two incoming grads in; two grads out
    nbytes = {"fwd": fwd, "fwd_bwd": fwd + bwd, "meta": fwd + bwd + dd}[mode]
    group = f"fusion_loss {shape[0]}x{shape[2]}x{shape[3]} {mode}"
    return group, run, nbytes


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", MDTA_CASES, ids=lambda c: f"w{c[0]}-{c[1]}x{c[2]}")
def test_mdta(benchmark, bench_report, bench_sync, bench_device_name, case, mode, impl):
    if impl == "compile" and mode == "meta":
        pytest.skip("torch.compile does not support double backward")
    group, run, nbytes = mdta_case(_impl("mdta", impl), mode, case)
    _measure(benchmark, bench_report, bench_sync, bench_device_name, group, impl, run, nbytes)


def mdta_case(fn, mode: str, case, device=DEVICE):
    """(group, run, bytes) of one MDTA row (``case`` = width, H, W); ``fn`` is checked first."""
    width, h, w = case
    shape = (MDTA_BATCH, MDTA_HEADS, width // MDTA_HEADS, h * w)
    gen = torch.Generator().manual_seed(1)
    q, k, v, do = (torch.randn(shape, generator=gen).to(device).requires_grad_(True)
                   for _ in range(4))
    t = (torch.rand(MDTA_HEADS, 1, 1, generator=gen) + 0.5).to(device).requires_grad_(True)
    us = [torch.randn(shape, generator=gen).to(device) for _ in range(3)]
    us.append(torch.randn(MDTA_HEADS, 1, 1, generator=gen).to(device))
    if fn is not mdta_attention_reference:
        torch.testing.assert_close(fn(q, k, v, t), mdta_attention_reference(q, k, v, t),
                                   rtol=1e-4, atol=1e-5)

    def run():
        out = fn(q, k, v, t)
        if mode == "fwd_bwd":
            torch.autograd.grad(out, (q, k, v, t), do)
        elif mode == "meta":
            # dO requires grad as it does inside a network, so dL/d(dO) is part of the work
            first = torch.autograd.grad(out, (q, k, v, t), do, create_graph=True)
            torch.autograd.grad(first, (q, k, v, t, do), us)

    x = q.numel() * q.element_size()
    fwd = 4 * x  # q, k (Grams); v in, out
    bwd = 8 * x  # dO, v (Gram); q, k, dO in, dq, dk, dv out
    dd = 18 * x  # 7 tensors (Grams); the same 7 in, 4 grads out
    nbytes = {"fwd": fwd, "fwd_bwd": fwd + bwd, "meta": fwd + bwd + dd}[mode]
    group = f"mdta b{MDTA_BATCH} w{width} {h}x{w} {mode}"
    return group, run, nbytes


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", LN_SHAPES, ids=lambda s: f"c{s[1]}-{s[2]}x{s[3]}")
def test_layernorm(benchmark, bench_report, bench_sync, bench_device_name, shape, mode, impl):
    if impl == "compile" and mode == "meta":
        pytest.skip("torch.compile does not support double backward")
    group, run, nbytes = layernorm_case(_impl("layernorm", impl), mode, shape)
    _measure(benchmark, bench_report, bench_sync, bench_device_name, group, impl, run, nbytes)


def layernorm_case(fn, mode: str, shape, device=DEVICE):
    """(group, run, bytes) of one channel-LayerNorm row (``shape`` B×C×H×W); ``fn`` is checked first."""
    gen = torch.Generator().manual_seed(2)
    x, gy = (torch.randn(shape, generator=gen).to(device).requires_grad_(True) for _ in range(2))
    w, b = (torch.randn(shape[1], generator=gen).to(device).requires_grad_(True) for _ in range(2))
    us = [torch.randn(shape, generator=gen).to(device), torch.randn(shape[1]).to(device),
          torch.randn(shape[1]).to(device)]
    if fn is not layer_norm_channels_reference:
        torch.testing.assert_close(fn(x, w, b), layer_norm_channels_reference(x, w, b),
                                   rtol=1e-4, atol=1e-5)

    def run():
        y = fn(x, w, b)
        if mode == "fwd_bwd":
            torch.autograd.grad(y, (x, w, b), gy)
        elif mode == "meta":
            first = torch.autograd.grad(y, (x, w, b), gy, create_graph=True)
            torch.autograd.grad(first, (x, w, gy), us)

    n = x.numel() * x.element_size()
    fwd = 2 * n  # x in, y out
    bwd = 3 * n  # x, dy in, dx out (weight/bias partials are negligible)
    dd = 5 * n  # x, dy, hx in; grads of x and dy out
    nbytes = {"fwd": fwd, "fwd_bwd": fwd + bwd, "meta": fwd + bwd + dd}[mode]
    group = f"layernorm b{shape[0]} c{shape[1]} {shape[2]}x{shape[3]} {mode}"
    return group, run, nbytes
