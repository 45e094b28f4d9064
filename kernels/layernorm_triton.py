"""Channel LayerNorm of NCHW tensors in Triton, differentiable to second order.

Each pixel's C-vector is normalised (biased variance), then scaled and shifted per channel.
A program owns all C channels of a block of pixels, so every per-pixel statistic is a reduction
along the tile's first axis; the per-channel sums over pixels (weight and bias gradients) are
per-program partials summed by one ``torch.sum``.

Autograd structure:

* ``_LayerNorm``               forward: one pass.
* ``_LayerNormBackward``       = ``_LayerNorm.backward``: one pass → dx; dweight, dbias partials.
                               Statistics are recomputed from x (cheaper than storing them:
                               the pass reads x anyway).
* ``_LayerNormDoubleBackward`` = ``_LayerNormBackward.backward``: one pass → grads w.r.t. x,
                               weight and the incoming gradient.
* ``_LayerNormDoubleBackward.backward`` (third order, never on the training path) re-runs the
  reference twice under autograd and takes its vector-Jacobian product.

The maths is ``layer_norm_channels_reference``; see ``tests/test_kernels_layernorm.py``.
"""
from __future__ import annotations

import contextlib
import os
import struct

import torch
import triton
import triton.language as tl

from .autograd_utils import needs_grad, recompute_vjp
from .layernorm_reference import layer_norm_channels_reference


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _split(value: float) -> tuple[float, float]:
    # Triton passes Python floats as fp32; hi + lo keeps eps exact enough for fp64 gradchecks.
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, float(value - hi)


@triton.jit
def _tile(x_ptr, s_b, s_c, P, C: tl.constexpr, CP: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_p = tl.program_id(0)
    b = tl.program_id(1)
    c = tl.arange(0, CP)[:, None]
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    mask = (c < C) & (p < P)
    off = b.to(tl.int64) * s_b + c * s_c + p
    return c, mask, off


@triton.jit
def _stats(x, mask, eps_hi, eps_lo, C: tl.constexpr, COMPUTE: tl.constexpr):
    """x̂ = (x − mean)·rs with rs = 1/√(var + eps), per pixel (column)."""
    eps = tl.cast(eps_hi, COMPUTE) + tl.cast(eps_lo, COMPUTE)
    mean = tl.sum(x, axis=0) / C
    xc = tl.where(mask, x - mean[None, :], 0.0)
    var = tl.sum(xc * xc, axis=0) / C
    rs = 1.0 / tl.sqrt(var + eps)
    return xc * rs[None, :], rs


@triton.jit
def _project(v, xh, mask, C: tl.constexpr):
    """Π·v = v − mean(v) − x̂·mean(x̂·v): the (symmetric) Jacobian of x̂, divided by rs."""
    pv = v - (tl.sum(v, axis=0) / C)[None, :] - xh * (tl.sum(xh * v, axis=0) / C)[None, :]
    return tl.where(mask, pv, 0.0)


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, s_b, s_c, P, eps_hi, eps_lo, C: tl.constexpr,
                CP: tl.constexpr, BLOCK_P: tl.constexpr, COMPUTE: tl.constexpr):
    c, mask, off = _tile(x_ptr, s_b, s_c, P, C, CP, BLOCK_P)
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(COMPUTE)
    w = tl.load(w_ptr + c, mask=c < C, other=0.0).to(COMPUTE)
    bias = tl.load(b_ptr + c, mask=c < C, other=0.0).to(COMPUTE)
    xh, rs = _stats(x, mask, eps_hi, eps_lo, C, COMPUTE)
    tl.store(y_ptr + off, (xh * w + bias).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(x_ptr, w_ptr, gy_ptr, gx_ptr, part_ptr, s_b, s_c, P, eps_hi, eps_lo,
                NEED_X: tl.constexpr, NEED_WB: tl.constexpr, C: tl.constexpr, CP: tl.constexpr,
                BLOCK_P: tl.constexpr, COMPUTE: tl.constexpr):
    c, mask, off = _tile(x_ptr, s_b, s_c, P, C, CP, BLOCK_P)
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(COMPUTE)
    gy = tl.load(gy_ptr + off, mask=mask, other=0.0).to(COMPUTE)
    xh, rs = _stats(x, mask, eps_hi, eps_lo, C, COMPUTE)
    if NEED_X:
        w = tl.load(w_ptr + c, mask=c < C, other=0.0).to(COMPUTE)
        gx = rs[None, :] * _project(gy * w, xh, mask, C)
        tl.store(gx_ptr + off, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    if NEED_WB:
        prog = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        vec = tl.arange(0, CP)
        tl.store(part_ptr + prog * 2 * CP + vec, tl.sum(gy * xh, axis=1))
        tl.store(part_ptr + prog * 2 * CP + CP + vec, tl.sum(gy, axis=1))


@triton.jit
def _dd_kernel(x_ptr, w_ptr, gy_ptr, hx_ptr, hw_ptr, hb_ptr, ggx_ptr, gggy_ptr, part_ptr,
               s_b, s_c, P, eps_hi, eps_lo,
               HAS_HX: tl.constexpr, HAS_HW: tl.constexpr, HAS_HB: tl.constexpr,
               NEED_X: tl.constexpr, NEED_W: tl.constexpr, NEED_GY: tl.constexpr,
               C: tl.constexpr, CP: tl.constexpr, BLOCK_P: tl.constexpr, COMPUTE: tl.constexpr):
    """Gradient of φ = <hx, dx> + <hw, dw> + <hb, db> w.r.t. x, weight and dy.

    With g = dy·w, s = mean(g·x̂), A = <hx, g − mean(g)>, B = <hx, x̂> per pixel:
    ∂φ/∂x = −rs²·((A − s·B)/C·x̂ + B/C·Π·g + s·Π·hx) + rs·Π·(hw·dy),
    ∂φ/∂w = Σ_pixels dy·rs·Π·hx,  ∂φ/∂dy = w·rs·Π·hx + hw·x̂ + hb.
    """
    c, mask, off = _tile(x_ptr, s_b, s_c, P, C, CP, BLOCK_P)
    cmask = c < C
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(COMPUTE)
    gy = tl.load(gy_ptr + off, mask=mask, other=0.0).to(COMPUTE)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
    xh, rs = _stats(x, mask, eps_hi, eps_lo, C, COMPUTE)
    if HAS_HX:
        hx = tl.load(hx_ptr + off, mask=mask, other=0.0).to(COMPUTE)
        p_hx = rs[None, :] * _project(hx, xh, mask, C)  # the backward's adjoint applied to hx
    else:
        hx = tl.zeros(x.shape, COMPUTE)
        p_hx = hx
    if HAS_HW:
        hw = tl.load(hw_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
    else:
        hw = tl.zeros(w.shape, COMPUTE)
    if NEED_X:
        ggx = rs[None, :] * _project(hw * gy, xh, mask, C)
        if HAS_HX:
            g = gy * w
            s = tl.sum(g * xh, axis=0) / C
            A = tl.sum(hx * (g - (tl.sum(g, axis=0) / C)[None, :]), axis=0)
            B = tl.sum(hx * xh, axis=0)
            inner = ((A - s * B) / C)[None, :] * xh + (B / C)[None, :] * _project(g, xh, mask, C) \
                + s[None, :] * _project(hx, xh, mask, C)
            ggx -= (rs * rs)[None, :] * inner
        tl.store(ggx_ptr + off, ggx.to(ggx_ptr.dtype.element_ty), mask=mask)
    if NEED_GY:
        gg = w * p_hx + hw * xh
        if HAS_HB:
            gg += tl.load(hb_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
        gg = tl.where(mask, gg, 0.0)
        tl.store(gggy_ptr + off, gg.to(gggy_ptr.dtype.element_ty), mask=mask)
    if NEED_W:
        prog = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        tl.store(part_ptr + prog * CP + tl.arange(0, CP), tl.sum(gy * p_hx, axis=1))


class _Geometry:
    """One program per (batch, block of pixels) holding all channels of those pixels."""

    def __init__(self, x: torch.Tensor):
        self.B, self.C, H, W = x.shape
        self.P = H * W
        self.CP = _next_pow2(self.C)
        # CP·BLOCK_P = 2048 with 8 warps keeps the double backward under ~100 registers, unspilled
        if x.is_cuda:
            self.block_p = max(16, min(_next_pow2(self.P), 2048 // self.CP))
        else:  # the interpreter: small blocks exercise masks and several programs
            self.block_p = int(os.environ.get("TDFUSION_LN_INTERPRET_BLOCK", "16"))
        self.num_warps = 8
        self.grid = (triton.cdiv(self.P, self.block_p), self.B)
        self.compute = tl.float64 if x.dtype == torch.float64 else tl.float32
        self.acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32

    def meta(self) -> dict:
        return dict(C=self.C, CP=self.CP, BLOCK_P=self.block_p, COMPUTE=self.compute,
                    num_warps=self.num_warps)

    def programs(self) -> int:
        return self.grid[0] * self.grid[1]


def _bc(x: torch.Tensor) -> tuple[int, int]:
    return x.stride(0), x.stride(1)


def _contiguous(x: torch.Tensor | None) -> torch.Tensor | None:
    # One layout for x, the incoming grads and every output keeps the kernels to one offset.
    return x if x is None else x.contiguous()


def _double_backward_reference(eps: float):
    """(x, weight, dy, hx, hw, hb) → grads w.r.t. (x, weight, dy) of <h, VJP of the reference>."""

    def fn(x, w, gy, hx, hw, hb):
        bias = torch.zeros_like(w, requires_grad=True)
        y = layer_norm_channels_reference(x, w, bias, eps)
        first = torch.autograd.grad(y, (x, w, bias), gy, create_graph=True)
        pairs = [(o, h) for o, h in zip(first, (hx, hw, hb)) if h is not None]
        return torch.autograd.grad([o for o, _ in pairs], (x, w, gy), [h for _, h in pairs],
                                   create_graph=True, allow_unused=True)

    return fn


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        geo = _Geometry(x)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        _fwd_kernel[geo.grid](x, weight, bias, y, *_bc(x), geo.P, *_split(eps), **geo.meta())
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = needs_grad(ctx, 3)
        gx, gw, gb = _LayerNormBackward.apply(x, weight, gy, ctx.eps, need_x, need_w or need_b)
        return gx, (gw if need_w else None), (gb if need_b else None), None


class _LayerNormBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, gy, eps, need_x, need_wb):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, gy)  # the original gy, so higher orders reach it
        ctx.eps = eps
        gy = _contiguous(gy)
        geo = _Geometry(x)
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        part = torch.empty((geo.programs(), 2, geo.CP) if need_wb else (1,), dtype=geo.acc_dtype,
                           device=x.device)
        _bwd_kernel[geo.grid](x, weight, gy, gx if need_x else x, part, *_bc(x), geo.P,
                              *_split(eps), NEED_X=need_x, NEED_WB=need_wb, **geo.meta())
        gw = gb = None
        if need_wb:
            sums = part.sum(dim=0)[:, :geo.C].to(weight.dtype)
            gw, gb = sums[0], sums[1]
        return gx, gw, gb

    @staticmethod
    def backward(ctx, hx, hw, hb):
        x, weight, gy = ctx.saved_tensors
        grads = _LayerNormDoubleBackward.apply(x, weight, gy, hx, hw, hb, ctx.eps, *needs_grad(ctx, 3))
        return (*grads, None, None, None)


class _LayerNormDoubleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, gy, hx, hw, hb, eps, need_x, need_w, need_gy):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, gy, hx, hw, hb)  # originals, not the copies below
        ctx.eps = eps
        # hw, hb are often expands (stride 0) of a sum's gradient; kernels index them densely
        gy, hx, hw, hb = _contiguous(gy), _contiguous(hx), _contiguous(hw), _contiguous(hb)
        geo = _Geometry(x)
        ggx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        gggy = torch.empty(gy.shape, dtype=gy.dtype, device=gy.device) if need_gy else None
        part = torch.empty((geo.programs(), geo.CP) if need_w else (1,), dtype=geo.acc_dtype,
                           device=x.device)
        _dd_kernel[geo.grid](x, weight, gy, hx if hx is not None else x,
                             hw if hw is not None else weight, hb if hb is not None else weight,
                             ggx if need_x else x, gggy if need_gy else x, part,
                             *_bc(x), geo.P,
                             *_split(eps), HAS_HX=hx is not None, HAS_HW=hw is not None,
                             HAS_HB=hb is not None, NEED_X=need_x, NEED_W=need_w,
                             NEED_GY=need_gy, **geo.meta())
        ggw = part.sum(dim=0)[:geo.C].to(weight.dtype) if need_w else None
        return ggx, ggw, gggy

    @staticmethod
    def backward(ctx, *upstream):
        # Third order: only for completeness (the meta step stops at second order).
        grads = recompute_vjp(_double_backward_reference(ctx.eps), ctx.saved_tensors,
                               needs_grad(ctx, 6), upstream)
        return (*grads, None, None, None, None)


def layer_norm_channels_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                               eps: float = 1e-5) -> torch.Tensor:
    """``layer_norm_channels_reference`` as Triton kernels (value, gradient, gradient of gradient).

    x: B×C×H×W (non-contiguous input costs a copy); statistics in fp32 (fp64 for fp64 input);
    the output has x's dtype.
    """
    if x.dim() != 4 or weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise ValueError(f"expected B×C×H×W input with C-sized weight and bias, got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
    if x.numel() == 0:
        return layer_norm_channels_reference(x, weight, bias, eps)
    # Triton launches on the current device; autograd's device threads handle the backward.
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        return _LayerNorm.apply(x.contiguous(), weight.contiguous(), bias.contiguous(),
                                float(eps))
