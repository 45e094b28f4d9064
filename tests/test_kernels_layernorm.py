"""Triton channel LayerNorm vs ``layer_norm_channels_reference``: value, gradient, grad of grad.

Without CUDA the kernels run on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``,
set by tests/conftest.py before anything imports triton), so shapes stay tiny. With CUDA the same tests run the
compiled kernels on the GPU.
"""
from __future__ import annotations


import torch

import pytest  # noqa: E402

pytest.importorskip("triton")

from tdfusion_edge.kernels import (  # noqa: E402
    layer_norm_channels,
    layer_norm_channels_reference,
    use_triton,
)
from tdfusion_edge.kernels.layernorm_triton import layer_norm_channels_triton  # noqa: E402
from sm90_compile import assert_compiles_for_sm90  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(shape, dtype=torch.float64, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
    w = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    b = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    return [t.to(device=DEVICE, dtype=dtype).requires_grad_(requires_grad) for t in (x, w, b)]


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 16, 3, 7), (2, 32, 1, 1), (1, 1, 2, 3),
                                   (1, 5, 17, 1)])
def test_value_matches_reference(shape):
    x, w, b = _inputs(shape)
    got = layer_norm_channels_triton(x, w, b)
    assert got.dtype == x.dtype
    torch.testing.assert_close(got, layer_norm_channels_reference(x, w, b), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 16, 3, 7)])
def test_first_and_second_order_match_reference(shape):
    x, w, b = _inputs(shape, requires_grad=True, seed=1)
    gen = torch.Generator().manual_seed(2)
    gy = torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    h_all = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(DEVICE) for t in (x, w, b)]
    for keep in [(1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        hs = [h if kept else None for h, kept in zip(h_all, keep)]
        results = []
        for fn in (layer_norm_channels_triton, layer_norm_channels_reference):
            first = torch.autograd.grad(fn(x, w, b), (x, w, b), gy, create_graph=True)
            pairs = [(a, h) for a, h in zip(first, hs) if h is not None]
            second = torch.autograd.grad([a for a, _ in pairs], (x, w, b, gy),
                                         [h for _, h in pairs], allow_unused=True)
            results.append((first, second))
        for a, b_ in zip(results[0][0], results[1][0]):
            torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)
        for a, b_ in zip(results[0][1], results[1][1]):
            a = a if a is not None else torch.zeros_like(b_) if b_ is not None else None
            b_ = b_ if b_ is not None else torch.zeros_like(a) if a is not None else None
            if a is not None:
                torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)


def test_gradcheck_gradgradcheck_and_third_order():
    inputs = _inputs((1, 3, 2, 3), requires_grad=True, seed=3)
    assert torch.autograd.gradcheck(layer_norm_channels_triton, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(layer_norm_channels_triton, inputs, fast_mode=True)

    def third(fn):
        first = torch.autograd.grad(fn(*inputs).pow(3).sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum((g * g.detach().cos()).sum() for g in first), inputs,
                                     create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in second), inputs)

    for a, b in zip(third(layer_norm_channels_triton), third(layer_norm_channels_reference)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    x, w, b = _inputs((2, 16, 5, 9), dtype=dtype, requires_grad=True, seed=4)
    got = layer_norm_channels_triton(x, w, b)
    assert got.dtype == dtype
    ref_in = [t.detach().double().requires_grad_(True) for t in (x, w, b)]
    want = layer_norm_channels_reference(*ref_in)
    tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    gy = torch.randn(got.shape, dtype=torch.float64).to(DEVICE)
    grads = torch.autograd.grad(got, (x, w, b), gy.to(dtype))
    assert [g.dtype for g in grads] == [dtype] * 3
    ref_grads = torch.autograd.grad(want, ref_in, gy.to(dtype).double())
    for a, b_ in zip(grads, ref_grads):
        scale = b_.abs().max()
        torch.testing.assert_close(a.double(), b_, rtol=tol, atol=tol * 5 * scale)


def test_non_contiguous_input():
    gen = torch.Generator().manual_seed(5)
    big = torch.randn(2, 12, 5, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    _, w, b = _inputs((2, 6, 5, 6), requires_grad=True, seed=6)
    chunk = big.chunk(2, dim=1)[1]  # a channel chunk, as after a split
    transposed = big[:, :6].transpose(-1, -2).contiguous().transpose(-1, -2)
    for x in (chunk, transposed):
        assert not x.is_contiguous()
        x = x.requires_grad_(True)
        got = layer_norm_channels_triton(x, w, b)
        want = layer_norm_channels_reference(x, w, b)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for a, b_ in zip(torch.autograd.grad(got.square().sum(), (x, w, b)),
                         torch.autograd.grad(want.square().sum(), (x, w, b))):
            torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)


def test_dispatch(monkeypatch):
    x, w, b = _inputs((2, 4, 3, 3), seed=7)
    want = layer_norm_channels(x, w, b, backend="reference")
    torch.testing.assert_close(layer_norm_channels(x, w, b, backend="triton"), want,
                               rtol=1e-12, atol=1e-12)
    monkeypatch.delenv("TDFUSION_KERNELS", raising=False)
    xc, wc, bc = (t.cpu() for t in (x, w, b))
    assert not use_triton(xc, wc, bc)
    torch.testing.assert_close(layer_norm_channels(xc, wc, bc),
                               layer_norm_channels_reference(xc, wc, bc), rtol=0, atol=0)


def test_invalid_arguments_raise():
    x, w, b = _inputs((1, 4, 2, 2))
    with pytest.raises(ValueError):
        layer_norm_channels_triton(x, w[:3], b)
    with pytest.raises(ValueError):
        layer_norm_channels_triton(x[0], w, b)


# run after the prelude of tests/sm90_compile.py, with the kernel module as ``m``
_SM90_COMPILE = r"""
for dt, comp, c in (("fp32", tl.float32, 32), ("fp64", tl.float64, 3), ("bf16", tl.float32, 16)):
    types = {n: "*" + dt for jf in (m._fwd_kernel, m._bwd_kernel, m._dd_kernel)
             for n in jf.arg_names if n.endswith("_ptr")}
    types.update(part_ptr="*fp64" if dt == "fp64" else "*fp32", eps_hi="fp32", eps_lo="fp32")
    cp = 1 << (c - 1).bit_length()
    meta = dict(C=c, CP=cp, BLOCK_P=max(16, 2048 // cp), COMPUTE=comp)
    compile_sm90(m._fwd_kernel, types, meta)
    compile_sm90(m._bwd_kernel, types, dict(meta, NEED_X=True, NEED_WB=True))
    for on in (True, False):
        compile_sm90(m._dd_kernel, types, dict(meta, HAS_HX=True, HAS_HW=on, HAS_HB=on,
                                               NEED_X=True, NEED_W=on, NEED_GY=True))
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter accepts code a GPU compile rejects: compile for sm_90 with ptxas."""
    assert_compiles_for_sm90("layernorm_triton", _SM90_COMPILE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels,size", [(16, (256, 256)), (32, (480, 640))])
def test_gpu_real_size_double_backward(channels, size):
    gen = torch.Generator().manual_seed(8)
    shape = (2, channels, *size)
    base = [torch.randn(shape, generator=gen), torch.randn(channels, generator=gen),
            torch.randn(channels, generator=gen), torch.randn(shape, generator=gen)]
    hs = [torch.randn(shape, generator=gen).cuda(), torch.randn(channels).cuda(),
          torch.randn(channels).cuda()]
    results = []
    for fn in (layer_norm_channels_triton, layer_norm_channels_reference):
        x, w, b, gy = (t.cuda().requires_grad_(True) for t in base)
        first = torch.autograd.grad(fn(x, w, b), (x, w, b), gy, create_graph=True)
        second = torch.autograd.grad(first, (x, w, gy), hs)
        results.append([*[g.detach() for g in first], *second])
    for a, b in zip(*results):
        scale = b.abs().max().clamp_min(1e-6)
        assert ((a - b).abs().max() / scale).item() < 1e-4
