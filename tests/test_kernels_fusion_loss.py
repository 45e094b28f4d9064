"""Triton fusion loss vs ``fusion_loss_reference``: value, gradient, gradient of gradient.

Without CUDA the kernels run on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``,
set by tests/conftest.py before anything imports triton), so shapes stay tiny. With CUDA the same tests run the
compiled kernels on the GPU, and the ``gpu`` tests add real sizes.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from tdfusion_edge.kernels import fusion_loss, fusion_loss_reference, use_triton  # noqa: E402
from tdfusion_edge.kernels.fusion_loss_triton import fusion_loss_triton  # noqa: E402
from sm90_compile import assert_compiles_for_sm90  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("one_torch_thread")
FORMS = ("paper", "released")
REDUCTIONS = ("mean", "none")


def _inputs(shape, dtype=torch.float64, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.rand(shape, generator=gen, dtype=torch.float64) for _ in range(4)]
    return [x.to(device=DEVICE, dtype=dtype).requires_grad_(requires_grad) for x in xs]


def _first_and_second(fn, xs, g, hs, **kw):
    """Loss, ∇_x(g·loss) with create_graph, then the grads of <h, ∇> w.r.t. the inputs and g."""
    out = fn(*xs, **kw)
    first = torch.autograd.grad(out, xs, g, create_graph=True)
    pairs = [(a, h) for a, h in zip(first, hs) if h is not None]
    second = torch.autograd.grad([a for a, _ in pairs], [*xs, g], [h for _, h in pairs],
                                 allow_unused=True)
    return out, first, second


def _close(a, b, **tol):
    if a is None and b is None:
        return
    if a is None or b is None:
        # autograd reports an input it never reached as None; the kernel may return zeros
        a, b = (x if x is not None else torch.zeros_like(y) for x, y in ((a, b), (b, a)))
    torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("shape", [(2, 1, 5, 7), (1, 1, 1, 1), (1, 1, 2, 3), (3, 1, 1, 9),
                                   (1, 1, 9, 1), (1, 1, 17, 70)])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_value_matches_reference(shape, form, reduction):
    xs = _inputs(shape)
    got = fusion_loss_triton(*xs, alpha=0.7, intensity_form=form, reduction=reduction)
    want = fusion_loss_reference(*xs, alpha=0.7, intensity_form=form, reduction=reduction)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("grad_sources", [False, True], ids=["fused+w", "all"])
def test_first_and_second_order_match_reference(form, reduction, grad_sources):
    shape = (2, 1, 5, 7)
    xs = _inputs(shape, requires_grad=True, seed=1)
    if not grad_sources:  # the training case: ir and vis are data
        xs[1].requires_grad_(False)
        xs[2].requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(() if reduction == "mean" else (2,), generator=gen, dtype=torch.float64)
    g = g.to(DEVICE).requires_grad_(True)
    wrt = [x for x in xs if x.requires_grad]
    h_all = [torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE) for _ in wrt]
    for keep in ((True,) * len(wrt), (True,) + (False,) * (len(wrt) - 1),
                 (False,) * (len(wrt) - 1) + (True,)):
        hs = [h if k else None for h, k in zip(h_all, keep)]
        kw = dict(alpha=0.3, intensity_form=form, reduction=reduction)
        fn_t = lambda *a, **k: fusion_loss_triton(*_merge(xs, a), **k)  # noqa: E731
        fn_r = lambda *a, **k: fusion_loss_reference(*_merge(xs, a), **k)  # noqa: E731
        out_t, first_t, second_t = _first_and_second(fn_t, wrt, g, hs, **kw)
        out_r, first_r, second_r = _first_and_second(fn_r, wrt, g, hs, **kw)
        torch.testing.assert_close(out_t, out_r, rtol=1e-12, atol=1e-14)
        for a, b in zip(first_t, first_r):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        for a, b in zip(second_t, second_r):
            _close(a, b, rtol=1e-10, atol=1e-13)


def _merge(xs, differentiable):
    """Put the differentiable tensors back among the four inputs, in order."""
    it = iter(differentiable)
    return [next(it) if x.requires_grad else x for x in xs]


@pytest.mark.parametrize("form,reduction", [("paper", "none"), ("released", "mean")])
def test_gradcheck_and_gradgradcheck(form, reduction):
    xs = _inputs((2, 1, 3, 4), requires_grad=True, seed=3)
    fn = lambda *a: fusion_loss_triton(*a, alpha=0.6, intensity_form=form,  # noqa: E731
                                       reduction=reduction)
    assert torch.autograd.gradcheck(fn, xs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, xs, fast_mode=True)


def _third_order(fn, xs):
    first = torch.autograd.grad(fn(*xs, intensity_form="released"), xs, create_graph=True)
    second = torch.autograd.grad(sum((g * g.detach().sin()).sum() for g in first), xs,
                                 create_graph=True)
    return torch.autograd.grad(sum(g.square().sum() for g in second), xs, allow_unused=True)


def test_third_order_matches_reference():
    # The double backward's own backward re-runs the reference: create_graph stays exact.
    xs = _inputs((2, 1, 3, 4), requires_grad=True, seed=4)
    for a, b in zip(_third_order(fusion_loss_triton, xs), _third_order(fusion_loss_reference, xs)):
        _close(a, b, rtol=1e-10, atol=1e-13)


def test_ties_go_to_infrared():
    fused, ir, _, w = _inputs((1, 1, 4, 6), requires_grad=True, seed=5)
    vis = ir.detach().clone().requires_grad_(True)  # every Sobel magnitude ties
    args = (fused, ir, vis, w)
    got = torch.autograd.grad(fusion_loss_triton(*args), args)
    want = torch.autograd.grad(fusion_loss_reference(*args), args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", FORMS)
def test_float32_tolerance(form):
    xs = _inputs((2, 1, 33, 45), dtype=torch.float32, requires_grad=True, seed=6)
    got = fusion_loss_triton(*xs, intensity_form=form)
    want = fusion_loss_reference(*xs, intensity_form=form)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(got, xs), torch.autograd.grad(want, xs)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    xs = _inputs((2, 1, 9, 13), dtype=dtype, requires_grad=True, seed=7)
    got = fusion_loss_triton(*xs, reduction="none")
    assert got.dtype == dtype
    want = fusion_loss_reference(*[x.detach().float() for x in xs], reduction="none")
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    grads = torch.autograd.grad(got.sum(), xs)
    assert all(g.dtype == dtype for g in grads)
    ref_in = [x.detach().float().requires_grad_(True) for x in xs]
    ref_grads = torch.autograd.grad(fusion_loss_reference(*ref_in, reduction="none").sum(), ref_in)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), b, rtol=tol, atol=tol * 1e-2)


def test_non_contiguous_and_broadcast_inputs():
    gen = torch.Generator().manual_seed(8)
    big = torch.rand(2, 3, 9, 14, generator=gen, dtype=torch.float64).to(DEVICE)
    fused = big[:, :1, :, ::2]  # strided along W
    ir = big[:, 1:2].transpose(-1, -2)[..., :7, :9].transpose(-1, -2)  # transposed storage
    vis = big[:, 2:3, :, 1::2]
    w = torch.rand(2, 1, 1, 1, generator=gen, dtype=torch.float64).to(DEVICE)  # broadcast weight
    fused = fused.clone().requires_grad_(True)
    w.requires_grad_(True)
    got = fusion_loss_triton(fused, ir, vis, w, reduction="none")
    want = fusion_loss_reference(fused, ir, vis, w, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    g_got = torch.autograd.grad(got.sum(), (fused, w))
    g_want = torch.autograd.grad(want.sum(), (fused, w))
    for a, b in zip(g_got, g_want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_invalid_arguments_raise():
    xs = _inputs((1, 1, 3, 3))
    with pytest.raises(ValueError):
        fusion_loss_triton(*xs, intensity_form="squared")
    with pytest.raises(ValueError):
        fusion_loss_triton(*xs, reduction="sum")
    with pytest.raises(ValueError):
        fusion_loss_triton(*[x.expand(1, 2, 3, 3) for x in xs])


def test_dispatch_forced_backends_agree(monkeypatch):
    xs = _inputs((2, 1, 6, 5), requires_grad=True, seed=9)
    got = fusion_loss(*xs, intensity_form="released", backend="triton")
    want = fusion_loss(*xs, intensity_form="released", backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    monkeypatch.setenv("TDFUSION_KERNELS", "triton")
    torch.testing.assert_close(fusion_loss(*xs, intensity_form="released"), want,
                               rtol=1e-12, atol=1e-14)


def test_dispatch_auto_on_cpu_uses_reference(monkeypatch):
    monkeypatch.delenv("TDFUSION_KERNELS", raising=False)
    xs = [x.cpu() for x in _inputs((1, 1, 4, 4))]
    assert not use_triton(*xs)
    assert not use_triton(*xs, backend="reference")
    torch.testing.assert_close(fusion_loss(*xs), fusion_loss_reference(*xs), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("form", FORMS)
def test_gpu_real_size_meta_step(form):
    """Batch 2 at 256×256 in fp32: value, gradient and the meta-style double backward."""
    gen = torch.Generator().manual_seed(10)
    base = [torch.rand(2, 1, 256, 256, generator=gen) for _ in range(4)]
    results = []
    for backend in ("triton", "reference"):
        fused, ir, vis, logit = (x.cuda().requires_grad_(i in (0, 3)) for i, x in enumerate(base))
        w = torch.sigmoid(logit)
        loss = fusion_loss(fused, ir, vis, w, intensity_form=form, backend=backend)
        g_f, g_l = torch.autograd.grad(loss, (fused, logit), create_graph=True)
        (g_f.square().sum() + (g_l * g_f).sum()).backward()
        results.append((loss.detach(), g_f.detach(), g_l.detach(), fused.grad, logit.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


# run after the prelude of tests/sm90_compile.py, with the kernel module as ``m``
_SM90_COMPILE = r"""
# every flag combination in fp32; fp64 compute; bf16 storage.
for dt, comp, variants in (("fp32", tl.float32, (True, False)), ("fp64", tl.float64, (True,)),
                           ("bf16", tl.float32, (False,))):
    types = {n: "*" + dt for jf in (m._fwd_kernel, m._bwd_kernel, m._dd_kernel)
             for n in jf.arg_names if n.endswith("_ptr")}
    types.update(code_ptr="*i8", part_ptr="*fp64" if dt == "fp64" else "*fp32",
                 alpha_hi="fp32", alpha_lo="fp32")
    base = dict(BLOCK_H=8, BLOCK_W=64, COMPUTE=comp, RELEASED=dt == "fp32")
    compile_sm90(m._fwd_kernel, types, base)
    for on in variants:
        compile_sm90(m._bwd_kernel, types, dict(base, NEED_F=True, NEED_I=on, NEED_V=on,
                                                NEED_W=True))
        flags = dict(HAS_HF=True, HAS_HI=on, HAS_HV=on, HAS_HW=True, NEED_F=True, NEED_I=on,
                     NEED_V=on, NEED_W=True, NEED_G=on)
        compile_sm90(m._dd_kernel, types, dict(base, **flags))
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter accepts code a GPU compile rejects: compile for sm_90 with ptxas."""
    assert_compiles_for_sm90("fusion_loss_triton", _SM90_COMPILE)
