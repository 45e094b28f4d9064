"""Triton MDTA attention vs ``mdta_attention_reference``: value, gradient, gradient of gradient.

Without CUDA the kernels run on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``,
set by tests/conftest.py before anything imports triton), so shapes stay tiny. With CUDA the same tests run the
compiled kernels on the GPU, and the ``gpu`` tests add real sizes.
"""
from __future__ import annotations


import torch

import pytest  # noqa: E402

pytest.importorskip("triton")

from tdfusion_edge.kernels import (  # noqa: E402
    fusion_loss,
    mdta_attention,
    mdta_attention_reference,
    use_triton,
)
from tdfusion_edge.kernels.mdta_triton import mdta_attention_triton  # noqa: E402
from sm90_compile import assert_compiles_for_sm90  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _qkv(shape, dtype=torch.float64, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3)]
    t = torch.rand(shape[1], 1, 1, generator=gen, dtype=torch.float64) + 0.5
    return [x.to(device=DEVICE, dtype=dtype).requires_grad_(requires_grad) for x in (*xs, t)]


def _first_and_second(fn, q, k, v, t, do, hs):
    """∇ of <dO, out> with create_graph, then grads of <h, ∇> w.r.t. (q, k, v, t, dO)."""
    first = torch.autograd.grad(fn(q, k, v, t), (q, k, v, t), do, create_graph=True)
    pairs = [(a, h) for a, h in zip(first, hs) if h is not None]
    second = torch.autograd.grad([a for a, _ in pairs], (q, k, v, t, do), [h for _, h in pairs],
                                 allow_unused=True)
    return first, second


# heads 1, 2, 4, 8; channels per head 1–4; N not a multiple of any block; batch 1–2.
SHAPES = [(1, 1, 2, 5), (2, 3, 3, 37), (1, 2, 4, 70), (2, 8, 2, 33), (1, 4, 4, 1), (1, 1, 1, 3),
          (2, 4, 3, 16)]


@pytest.mark.parametrize("shape", SHAPES)
def test_value_matches_reference(shape):
    q, k, v, t = _qkv(shape)
    got = mdta_attention_triton(q, k, v, t)
    assert got.shape == q.shape and got.dtype == q.dtype
    torch.testing.assert_close(got, mdta_attention_reference(q, k, v, t), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shape,every_subset", [((2, 3, 3, 21), True), ((1, 2, 4, 70), False),
                                                ((2, 1, 2, 9), False)])
def test_first_and_second_order_match_reference(shape, every_subset):
    q, k, v, t = _qkv(shape, requires_grad=True, seed=1)
    gen = torch.Generator().manual_seed(2)
    do = torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    h_all = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(DEVICE)
             for x in (q, k, v, t)]
    masks = [(1, 1, 1, 1), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]
    for keep in masks if every_subset else masks[:1]:  # which incoming grads are present
        hs = [h if kept else None for h, kept in zip(h_all, keep)]
        first_t, second_t = _first_and_second(mdta_attention_triton, q, k, v, t, do, hs)
        first_r, second_r = _first_and_second(mdta_attention_reference, q, k, v, t, do, hs)
        for a, b in zip(first_t, first_r):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(second_t, second_r):
            # the reference never reaches v from hv alone (dv is linear in v): None vs zeros
            a = a if a is not None else torch.zeros_like(b)
            b = b if b is not None else torch.zeros_like(a)
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_and_gradgradcheck():
    inputs = _qkv((1, 2, 3, 20), requires_grad=True, seed=3)
    assert torch.autograd.gradcheck(mdta_attention_triton, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(mdta_attention_triton, inputs, fast_mode=True)


def _third_order(fn, q, k, v, t):
    first = torch.autograd.grad(fn(q, k, v, t).square().sum(), (q, k, v, t), create_graph=True)
    second = torch.autograd.grad(sum((g * g.detach().sin()).sum() for g in first), (q, k, v, t),
                                 create_graph=True)
    return torch.autograd.grad(sum(g.square().sum() for g in second), (q, k, v, t))


def test_third_order_matches_reference():
    # The double backward's own backward re-runs the reference: create_graph stays exact.
    inputs = _qkv((1, 2, 3, 7), requires_grad=True, seed=4)
    for a, b in zip(_third_order(mdta_attention_triton, *inputs),
                    _third_order(mdta_attention_reference, *inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_zero_norm_row_uses_the_eps_clamp():
    q, k, v, t = _qkv((1, 2, 3, 9), seed=5)
    q[0, 1, 2] = 0.0
    k[0, 0, 0] = 0.0
    args = [x.requires_grad_(True) for x in (q, k, v, t)]
    got = mdta_attention_triton(*args)
    want = mdta_attention_reference(*args)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    # gradients reach 1/eps = 1e12 on the clamped rows: compare relatively
    for a, b in zip(torch.autograd.grad(got.sum(), args), torch.autograd.grad(want.sum(), args)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-6)


def test_float32_tolerance(monkeypatch):
    monkeypatch.setenv("TDFUSION_MDTA_INTERPRET_BLOCK", "64")  # fewer interpreter programs
    q, k, v, t = _qkv((2, 4, 4, 300), dtype=torch.float32, requires_grad=True, seed=6)
    got = mdta_attention_triton(q, k, v, t)
    want = mdta_attention_reference(q, k, v, t)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    do = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (q, k, v, t), do),
                    torch.autograd.grad(want, (q, k, v, t), do)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    q, k, v, t = _qkv((2, 2, 4, 50), seed=7)
    q, k, v = (x.to(dtype).requires_grad_(True) for x in (q, k, v))
    t = t.float().requires_grad_(True)  # the temperature parameter stays fp32 under autocast
    got = mdta_attention_triton(q, k, v, t)
    assert got.dtype == dtype
    ref_in = [x.detach().float().requires_grad_(True) for x in (q, k, v, t)]
    want = mdta_attention_reference(*ref_in)
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    grads = torch.autograd.grad(got.float().square().sum(), (q, k, v, t))
    assert [g.dtype for g in grads] == [dtype, dtype, dtype, torch.float32]
    ref_grads = torch.autograd.grad(want.square().sum(), ref_in)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), b, rtol=5 * tol, atol=5 * tol)


def test_non_contiguous_inputs_and_temperature_shapes():
    gen = torch.Generator().manual_seed(8)
    b, heads, c, h, w = 2, 4, 3, 5, 7
    qkv = torch.randn(b, 3 * heads * c, h, w, generator=gen, dtype=torch.float64).to(DEVICE)
    # as the model does: chunk of a conv output, reshaped to heads (strided batch, unit pixels)
    q, k, v = (x.reshape(b, heads, c, h * w) for x in qkv.chunk(3, dim=1))
    assert not q.is_contiguous()
    k = k.transpose(-1, -2).contiguous().transpose(-1, -2)  # non-unit pixel stride: copied
    for t in (torch.rand(heads, 1, 1, generator=gen, dtype=torch.float64),
              torch.rand(heads, generator=gen, dtype=torch.float64),
              torch.rand(1, generator=gen, dtype=torch.float64)):
        args = [x.detach().requires_grad_(True) for x in (q, k, v, t.to(DEVICE))]
        got = mdta_attention_triton(*args)
        want = mdta_attention_reference(*args)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
        g_got = torch.autograd.grad(got.square().sum(), args)
        g_want = torch.autograd.grad(want.square().sum(), args)
        for a, b_ in zip(g_got, g_want):
            assert a.shape == b_.shape
            torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)
    # an incoming gradient with a non-unit pixel stride, through the double backward
    do = torch.randn(b, heads, h * w, c, generator=gen, dtype=torch.float64).to(DEVICE)
    do = do.transpose(-1, -2).requires_grad_(True)
    hs = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(DEVICE) for x in args]
    results = [_first_and_second(fn, *args, do, hs)
               for fn in (mdta_attention_triton, mdta_attention_reference)]
    for a, b_ in zip([*results[0][0], *results[0][1]], [*results[1][0], *results[1][1]]):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)


def test_invalid_arguments_raise():
    q, k, v, t = _qkv((1, 2, 3, 4))
    with pytest.raises(ValueError):
        mdta_attention_triton(q, k[..., :3], v, t)
    with pytest.raises(ValueError):
        mdta_attention_triton(q, k, v, torch.ones(3, dtype=q.dtype, device=q.device))


def test_dispatch_forced_backends_agree(monkeypatch):
    q, k, v, t = _qkv((2, 2, 3, 11), seed=9)
    want = mdta_attention(q, k, v, t, backend="reference")
    torch.testing.assert_close(mdta_attention(q, k, v, t, backend="triton"), want,
                               rtol=1e-12, atol=1e-13)
    monkeypatch.setenv("TDFUSION_KERNELS", "triton")
    torch.testing.assert_close(mdta_attention(q, k, v, t), want, rtol=1e-12, atol=1e-13)


def test_dispatch_auto_on_cpu_uses_reference(monkeypatch):
    monkeypatch.delenv("TDFUSION_KERNELS", raising=False)
    q, k, v, t = (x.cpu() for x in _qkv((1, 2, 2, 5)))
    assert not use_triton(q, k, v, t)
    torch.testing.assert_close(mdta_attention(q, k, v, t), mdta_attention_reference(q, k, v, t),
                               rtol=0, atol=0)


def _fusion_net_meta_grads(backend: str, monkeypatch):
    """Inner grad of L_f w.r.t. F's parameters with create_graph, then an outer backward."""
    models = pytest.importorskip("tdfusion_edge.models")
    monkeypatch.setenv("TDFUSION_KERNELS", backend)
    # one interpreter program per (batch, head): the small-block paths are covered above
    monkeypatch.setenv("TDFUSION_MDTA_INTERPRET_BLOCK", "128")
    monkeypatch.setenv("TDFUSION_LN_INTERPRET_BLOCK", "128")
    torch.manual_seed(0)
    cfg = models.FusionNetConfig(dim=8, num_blocks=1, heads=4)
    net = models.FusionNet(cfg).to(device=DEVICE, dtype=torch.float64)
    gen = torch.Generator().manual_seed(11)
    ir, vis = (torch.rand(2, 1, 12, 10, generator=gen, dtype=torch.float64).to(DEVICE)
               for _ in range(2))
    logit = torch.randn(2, 1, 12, 10, generator=gen, dtype=torch.float64).to(DEVICE)
    logit.requires_grad_(True)  # stands in for the loss generator's output
    params = [p for p in net.parameters() if p.requires_grad]
    loss = fusion_loss(net(ir, vis), ir, vis, torch.sigmoid(logit))
    inner = torch.autograd.grad(loss, params, create_graph=True)
    # θ' = θ − η·g feeds a task loss; any smooth function of the inner grads exercises the same path
    outer = sum((g * torch.cos(p.detach())).sum() + g.square().sum() for g, p in zip(inner, params))
    outer.backward()
    return [loss.detach()] + [g.detach() for g in inner] + [logit.grad] + [p.grad for p in params]


def test_fusion_net_meta_step_matches_reference(monkeypatch):
    got = _fusion_net_meta_grads("triton", monkeypatch)
    want = _fusion_net_meta_grads("reference", monkeypatch)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("width,size", [(16, (256, 256)), (32, (256, 256)), (32, (480, 640))])
def test_gpu_real_size_double_backward(width, size):
    """8 heads at real resolutions in fp32: value, gradient and gradient of gradient."""
    heads = 8
    shape = (2, heads, width // heads, size[0] * size[1])
    gen = torch.Generator().manual_seed(12)
    base = [torch.randn(shape, generator=gen) for _ in range(4)]
    t0 = torch.rand(heads, 1, 1, generator=gen) + 0.5
    hs0 = [torch.randn(shape, generator=gen) for _ in range(3)] + [torch.randn(heads, 1, 1)]
    results = []
    for fn in (mdta_attention_triton, mdta_attention_reference):
        q, k, v, do = (x.cuda().requires_grad_(True) for x in base)
        t = t0.cuda().requires_grad_(True)
        out = fn(q, k, v, t)
        first = torch.autograd.grad(out, (q, k, v, t), do, create_graph=True)
        second = torch.autograd.grad(first, (q, k, v, t, do), [h.cuda() for h in hs0],
                                     allow_unused=True)
        results.append([out.detach(), *[g.detach() for g in first],
                        *[g if g is not None else torch.zeros_like(x)
                          for g, x in zip(second, (q, k, v, t, do))]])
    for a, b in zip(*results):
        scale = b.abs().max().clamp_min(1e-6)
        assert ((a - b).abs().max() / scale).item() < 1e-3


# run after the prelude of tests/sm90_compile.py, with the kernel module as ``m``
_SM90_COMPILE = r"""
# C = 4 with every flag combination; the padded C = 3 in fp64; C = 2 from fp16 storage.
for dt, comp, c, variants in (("fp32", tl.float32, 4, (True, False)),
                              ("fp64", tl.float64, 3, (True,)), ("fp16", tl.float32, 2, (True,))):
    acc = "*fp64" if dt == "fp64" else "*fp32"
    cp = 4 if c > 2 else 2
    types = {}
    for jf in (m._gram_kernel, m._mix_fwd_kernel, m._mix_bwd_kernel, m._mix_dd_kernel):
        types.update({n: "*" + dt for n in jf.arg_names if n.endswith("_ptr")})
    types.update({n: acc for n in ("part_ptr", "stats_ptr", "coef_ptr", "dt_ptr", "gt_ptr",
                                    "t_ptr", "ht_ptr")})
    mc = dict(C=c, CP=cp, COMPUTE=comp)
    bn = dict(BLOCK_N=max(128, 4096 // (cp * cp)))
    red = dict(NSTAT=m._nstat(cp), SPLITS_P2=64)
    for on in variants:
        h = dict(HAS_HQ=on, HAS_HK=True, HAS_HV=on)
        compile_sm90(m._gram_kernel, types, dict(mc, **bn, **h, WANT_QK=True, WANT_DP=on,
                                                 NSTAT=red["NSTAT"]))
        compile_sm90(m._finalize_dd_kernel, types, dict(mc, **red, **h, HAS_HT=on))
        compile_sm90(m._mix_dd_kernel, types, dict(mc, **bn, **h, NEED_Q=True, NEED_K=on,
                                                   NEED_V=on, NEED_DO=True))
    compile_sm90(m._finalize_fwd_kernel, types, dict(mc, **red))
    compile_sm90(m._finalize_bwd_kernel, types, dict(mc, **red))
    compile_sm90(m._mix_fwd_kernel, types, dict(mc, **bn))
    compile_sm90(m._mix_bwd_kernel, types, dict(mc, **bn, NEED_Q=True, NEED_K=True,
                                                NEED_V=True))
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter accepts code a GPU compile rejects: compile for sm_90 with ptxas."""
    assert_compiles_for_sm90("mdta_triton", _SM90_COMPILE)
