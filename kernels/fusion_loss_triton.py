"""Fused TDFusion fusion loss (L_int + α·L_grad) in Triton, differentiable to second order.

Autograd structure (each backward is another Function, so create_graph works at every level):

* ``_FusionLoss``            forward: one pass, 3×3 halo → per-tile partial sums + an int8 code
                             per pixel (signs of the two L1 residuals, which source won each axis).
* ``_FusionLossBackward``    = ``_FusionLoss.backward``: one pass → dL/dfused, dL/dw_ir (and
                             dL/dir, dL/dvis when those require grad), reading the code's 3×3 halo.
* ``_FusionLossDoubleBackward`` = ``_FusionLossBackward.backward``: one pass → grads w.r.t. fused,
                             ir, vis, w_ir (pointwise intensity Hessian; the L1 term's is zero a.e.)
                             and w.r.t. the incoming per-sample gradient (a directional derivative,
                             reduced per tile).
* ``_FusionLossDoubleBackward.backward`` (third order, never on the training path) re-runs the
  reference twice under autograd and takes its vector-Jacobian product.

The maths is ``fusion_loss_reference``; see ``tests/test_kernels_fusion_loss.py``.
"""
from __future__ import annotations

import contextlib
import struct

import torch
import triton
import triton.language as tl

from .autograd_utils import needs_grad, recompute_vjp
from .fusion_loss_reference import INTENSITY_FORMS, REDUCTIONS, fusion_loss_reference

# Code byte layout: bits 0-1 sign(Sx F − Tx)+1, bits 2-3 sign(Sy F − Ty)+1, bit 4 IR won x,
# bit 5 IR won y. 5 = (0, 0, vis, vis): the value outside the image, where the zero-padded
# adjoint of the Sobel stencil must see nothing.
_NEUTRAL_CODE = tl.constexpr(5)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _split_alpha(alpha: float) -> tuple[float, float]:
    # Triton passes Python floats as fp32; hi + lo restores ~48 bits so float64 gradchecks hold.
    hi = struct.unpack("f", struct.pack("f", alpha))[0]
    return hi, float(alpha - hi)


@triton.jit
def _tap(ptr, base, hh, ww, H, W, DY: tl.constexpr, DX: tl.constexpr, COMPUTE: tl.constexpr):
    r = hh + DY
    c = ww + DX
    m = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    return tl.load(ptr + base + r * W + c, mask=m, other=0.0).to(COMPUTE)


@triton.jit
def _sobel(ptr, base, hh, ww, H, W, COMPUTE: tl.constexpr):
    # Cross-correlation with zero padding 1: x = [[-1,0,1],[-2,0,2],[-1,0,1]], y = its transpose.
    a = _tap(ptr, base, hh, ww, H, W, -1, -1, COMPUTE)
    b = _tap(ptr, base, hh, ww, H, W, -1, 0, COMPUTE)
    c = _tap(ptr, base, hh, ww, H, W, -1, 1, COMPUTE)
    d = _tap(ptr, base, hh, ww, H, W, 0, -1, COMPUTE)
    e = _tap(ptr, base, hh, ww, H, W, 0, 1, COMPUTE)
    f = _tap(ptr, base, hh, ww, H, W, 1, -1, COMPUTE)
    g = _tap(ptr, base, hh, ww, H, W, 1, 0, COMPUTE)
    h = _tap(ptr, base, hh, ww, H, W, 1, 1, COMPUTE)
    gx = (c - a) + 2.0 * (e - d) + (h - f)
    gy = (f + 2.0 * g + h) - (a + 2.0 * b + c)
    return gx, gy


@triton.jit
def _sign(x):
    return (x > 0).to(tl.int32) - (x < 0).to(tl.int32)


@triton.jit
def _code_tap(code_ptr, base, hh, ww, H, W, DY: tl.constexpr, DX: tl.constexpr,
              WX: tl.constexpr, WY: tl.constexpr, acc_f, acc_i, acc_v,
              WANT_F: tl.constexpr, WANT_I: tl.constexpr, WANT_V: tl.constexpr):
    r = hh + DY
    c = ww + DX
    m = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    code = tl.load(code_ptr + base + r * W + c, mask=m, other=_NEUTRAL_CODE).to(tl.int32)
    sx = (code & 3) - 1
    sy = ((code >> 2) & 3) - 1
    mx = (code >> 4) & 1
    my = (code >> 5) & 1
    if WANT_F:
        acc_f += WX * sx + WY * sy
    if WANT_I:
        acc_i += WX * sx * mx + WY * sy * my
    if WANT_V:
        acc_v += WX * sx * (1 - mx) + WY * sy * (1 - my)
    return acc_f, acc_i, acc_v


@triton.jit
def _grad_fields(code_ptr, base, hh, ww, H, W, WANT_F: tl.constexpr, WANT_I: tl.constexpr,
                 WANT_V: tl.constexpr, COMPUTE: tl.constexpr):
    """d/d(fused, ir, vis) of |Sx F − Tx| + |Sy F − Ty| summed over pixels (integers, exact).

    The adjoint of a zero-padded cross-correlation is the correlation with the flipped kernel;
    flipping a Sobel kernel negates it, so ∂/∂F = −(Sx·sx + Sy·sy) applied to the sign fields,
    and the source that supplied the target gets +(Sx·(sx·m) + Sy·(sy·m)).
    """
    acc_f = tl.zeros(hh.shape, tl.int32) + tl.zeros(ww.shape, tl.int32)
    acc_i = acc_f
    acc_v = acc_f
    # (dy, dx, Sobel-x weight, Sobel-y weight) of the eight non-zero taps
    acc_f, acc_i, acc_v = _code_tap(code_ptr, base, hh, ww, H, W, -1, -1, -1, -1,
                                    acc_f, acc_i, acc_v, WANT_F, WANT_I, WANT_V)
    acc_f, acc_i, acc_v = _code_tap(code_ptr, base, hh, ww, H, W, -1, 0, 0, -2,
                                    acc_f, acc_i, acc_v, WANT_F, WANT_I, WANT_V)
    acc_f, acc_i, acc_v = _code_tap(code_ptr, base, hh, ww, H, W, -1, 1, 1, -1,
                                    acc_f, acc_i, acc_v, WANT_F, WANT_I, WANT_V)
    acc_f, acc_i, acc_v = _code_tap(code_ptr, base, hh, ww, H, W, 0, -1, -2, 0,
                                    acc_f, acc_i, acc_v, WANT_F, WANT_I, WANT_V)
    acc_f, acc_i, acc_v = _code_tap(code_ptr, base, hh, ww, H, W, 0, 1, 2, 0,
                                    acc_f, acc_i, acc_v, WANT_F, WANT_I, WANT_V)
    acc_f, acc_i, acc_v = _code_tap(code_ptr, base, hh, ww, H, W, 1, -1, -1, 1,
                                    acc_f, acc_i, acc_v, WANT_F, WANT_I, WANT_V)
    acc_f, acc_i, acc_v = _code_tap(code_ptr, base, hh, ww, H, W, 1, 0, 0, 2,
                                    acc_f, acc_i, acc_v, WANT_F, WANT_I, WANT_V)
    acc_f, acc_i, acc_v = _code_tap(code_ptr, base, hh, ww, H, W, 1, 1, 1, 1,
                                    acc_f, acc_i, acc_v, WANT_F, WANT_I, WANT_V)
    return (-acc_f).to(COMPUTE), acc_i.to(COMPUTE), acc_v.to(COMPUTE)


@triton.jit
def _weights(w, RELEASED: tl.constexpr):
    """Intensity weights a(w), b(w) and their first and second derivatives.

    paper: a = w, b = 1 − w; released: a = w², b = (1 − w)². L_int = a·(F−I)² + b·(F−V)².
    """
    if RELEASED:
        a = w * w
        b = (1.0 - w) * (1.0 - w)
        a1 = 2.0 * w
        b1 = -2.0 * (1.0 - w)
        a2 = 2.0
        b2 = 2.0
    else:
        a = w
        b = 1.0 - w
        a1 = 1.0
        b1 = -1.0
        a2 = 0.0
        b2 = 0.0
    return a, b, a1, b1, a2, b2


@triton.jit
def _tile(BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, H, W, tiles_w, tiles_per_img):
    pid = tl.program_id(0)
    b = pid // tiles_per_img
    t = pid % tiles_per_img
    hh = (t // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    ww = (t % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (hh < H) & (ww < W)
    base = b.to(tl.int64) * H * W
    return pid, b, hh, ww, inside, base, hh * W + ww


@triton.jit
def _fwd_kernel(f_ptr, i_ptr, v_ptr, w_ptr, code_ptr, part_ptr, H, W, tiles_w, tiles_per_img,
                alpha_hi, alpha_lo, RELEASED: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_W: tl.constexpr, COMPUTE: tl.constexpr):
    pid, b, hh, ww, inside, base, off = _tile(BLOCK_H, BLOCK_W, H, W, tiles_w, tiles_per_img)
    alpha = tl.cast(alpha_hi, COMPUTE) + tl.cast(alpha_lo, COMPUTE)
    f = tl.load(f_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    i = tl.load(i_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    v = tl.load(v_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    w = tl.load(w_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    fx, fy = _sobel(f_ptr, base, hh, ww, H, W, COMPUTE)
    ix, iy = _sobel(i_ptr, base, hh, ww, H, W, COMPUTE)
    vx, vy = _sobel(v_ptr, base, hh, ww, H, W, COMPUTE)
    ir_x = tl.abs(ix) >= tl.abs(vx)  # ties go to the infrared, as in the reference
    ir_y = tl.abs(iy) >= tl.abs(vy)
    rx = fx - tl.where(ir_x, ix, vx)
    ry = fy - tl.where(ir_y, iy, vy)
    a, bw, a1, b1, a2, b2 = _weights(w, RELEASED)
    d1 = f - i
    d2 = f - v
    per = a * d1 * d1 + bw * d2 * d2 + alpha * (tl.abs(rx) + tl.abs(ry))
    per = tl.where(inside, per, 0.0)
    # Dividing by the ints (not multiplying by a Python-float 1/HW) keeps fp64 exact.
    tl.store(part_ptr + pid, tl.sum(tl.sum(per, axis=1), axis=0) / H / W)
    code = ((_sign(rx) + 1) | ((_sign(ry) + 1) << 2)
            | (ir_x.to(tl.int32) << 4) | (ir_y.to(tl.int32) << 5))
    tl.store(code_ptr + base + off, code.to(tl.int8), mask=inside)


@triton.jit
def _bwd_kernel(f_ptr, i_ptr, v_ptr, w_ptr, code_ptr, g_ptr, g_stride, gf_ptr, gi_ptr, gv_ptr,
                gw_ptr, H, W, tiles_w, tiles_per_img, alpha_hi, alpha_lo,
                NEED_F: tl.constexpr, NEED_I: tl.constexpr, NEED_V: tl.constexpr,
                NEED_W: tl.constexpr, RELEASED: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_W: tl.constexpr, COMPUTE: tl.constexpr):
    pid, b, hh, ww, inside, base, off = _tile(BLOCK_H, BLOCK_W, H, W, tiles_w, tiles_per_img)
    alpha = tl.cast(alpha_hi, COMPUTE) + tl.cast(alpha_lo, COMPUTE)
    s = tl.load(g_ptr + b * g_stride).to(COMPUTE) / H / W
    f = tl.load(f_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    i = tl.load(i_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    v = tl.load(v_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    w = tl.load(w_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    a, bw, a1, b1, a2, b2 = _weights(w, RELEASED)
    d1 = f - i
    d2 = f - v
    t_f, t_i, t_v = _grad_fields(code_ptr, base, hh, ww, H, W, NEED_F, NEED_I, NEED_V, COMPUTE)
    if NEED_F:
        gf = s * (2.0 * a * d1 + 2.0 * bw * d2 + alpha * t_f)
        tl.store(gf_ptr + base + off, gf.to(gf_ptr.dtype.element_ty), mask=inside)
    if NEED_I:
        gi = s * (-2.0 * a * d1 + alpha * t_i)
        tl.store(gi_ptr + base + off, gi.to(gi_ptr.dtype.element_ty), mask=inside)
    if NEED_V:
        gv = s * (-2.0 * bw * d2 + alpha * t_v)
        tl.store(gv_ptr + base + off, gv.to(gv_ptr.dtype.element_ty), mask=inside)
    if NEED_W:
        gw = s * (a1 * d1 * d1 + b1 * d2 * d2)
        tl.store(gw_ptr + base + off, gw.to(gw_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _load_or_zero(ptr, base, off, inside, PRESENT: tl.constexpr, COMPUTE: tl.constexpr):
    if PRESENT:
        x = tl.load(ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    else:
        x = tl.zeros(off.shape, COMPUTE)
    return x


@triton.jit
def _dd_kernel(f_ptr, i_ptr, v_ptr, w_ptr, code_ptr, g_ptr, g_stride, hf_ptr, hi_ptr, hv_ptr,
               hw_ptr, ggf_ptr, ggi_ptr, ggv_ptr, ggw_ptr, part_ptr, H, W, tiles_w, tiles_per_img,
               alpha_hi, alpha_lo,
               HAS_HF: tl.constexpr, HAS_HI: tl.constexpr, HAS_HV: tl.constexpr,
               HAS_HW: tl.constexpr, NEED_F: tl.constexpr, NEED_I: tl.constexpr,
               NEED_V: tl.constexpr, NEED_W: tl.constexpr, NEED_G: tl.constexpr,
               RELEASED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
               COMPUTE: tl.constexpr):
    pid, b, hh, ww, inside, base, off = _tile(BLOCK_H, BLOCK_W, H, W, tiles_w, tiles_per_img)
    s = tl.load(g_ptr + b * g_stride).to(COMPUTE) / H / W
    f = tl.load(f_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    i = tl.load(i_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    v = tl.load(v_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    w = tl.load(w_ptr + base + off, mask=inside, other=0.0).to(COMPUTE)
    h_f = _load_or_zero(hf_ptr, base, off, inside, HAS_HF, COMPUTE)
    h_i = _load_or_zero(hi_ptr, base, off, inside, HAS_HI, COMPUTE)
    h_v = _load_or_zero(hv_ptr, base, off, inside, HAS_HV, COMPUTE)
    h_w = _load_or_zero(hw_ptr, base, off, inside, HAS_HW, COMPUTE)
    a, bw, a1, b1, a2, b2 = _weights(w, RELEASED)
    d1 = f - i
    d2 = f - v
    # Second derivatives of L_int; the Sobel-L1 term is piecewise linear, so contributes none.
    cross = 2.0 * a1 * d1 + 2.0 * b1 * d2
    if NEED_F:
        ggf = s * ((2.0 * a + 2.0 * bw) * h_f - 2.0 * a * h_i - 2.0 * bw * h_v + cross * h_w)
        tl.store(ggf_ptr + base + off, ggf.to(ggf_ptr.dtype.element_ty), mask=inside)
    if NEED_I:
        ggi = s * (-2.0 * a * h_f + 2.0 * a * h_i - 2.0 * a1 * d1 * h_w)
        tl.store(ggi_ptr + base + off, ggi.to(ggi_ptr.dtype.element_ty), mask=inside)
    if NEED_V:
        ggv = s * (-2.0 * bw * h_f + 2.0 * bw * h_v - 2.0 * b1 * d2 * h_w)
        tl.store(ggv_ptr + base + off, ggv.to(ggv_ptr.dtype.element_ty), mask=inside)
    if NEED_W:
        ggw = s * (cross * h_f - 2.0 * a1 * d1 * h_i - 2.0 * b1 * d2 * h_v
                   + (a2 * d1 * d1 + b2 * d2 * d2) * h_w)
        tl.store(ggw_ptr + base + off, ggw.to(ggw_ptr.dtype.element_ty), mask=inside)
    if NEED_G:
        # The first-order grads are linear in g, so d/dg is <h, first-order grads at g = 1>.
        alpha = tl.cast(alpha_hi, COMPUTE) + tl.cast(alpha_lo, COMPUTE)
        t_f, t_i, t_v = _grad_fields(code_ptr, base, hh, ww, H, W, HAS_HF, HAS_HI, HAS_HV, COMPUTE)
        dot = h_w * (a1 * d1 * d1 + b1 * d2 * d2)
        if HAS_HF:
            dot += h_f * (2.0 * a * d1 + 2.0 * bw * d2 + alpha * t_f)
        if HAS_HI:
            dot += h_i * (-2.0 * a * d1 + alpha * t_i)
        if HAS_HV:
            dot += h_v * (-2.0 * bw * d2 + alpha * t_v)
        dot = tl.where(inside, dot, 0.0)
        tl.store(part_ptr + pid, tl.sum(tl.sum(dot, axis=1), axis=0) / H / W)


class _Launch:
    """Tile geometry of one B×1×H×W problem.

    8×64 tiles give 256 programs at 256×256 batch 2 (≈2 per H100 SM) with rows of 256 B for
    coalesced loads; the 24 halo taps of the forward are L1 hits.
    """

    def __init__(self, x: torch.Tensor):
        self.B, _, self.H, self.W = x.shape
        self.block_h = min(8, _next_pow2(self.H))
        self.block_w = min(64, _next_pow2(self.W))
        self.tiles_w = triton.cdiv(self.W, self.block_w)
        self.tiles_per_img = triton.cdiv(self.H, self.block_h) * self.tiles_w
        self.grid = (self.B * self.tiles_per_img,)
        self.compute = tl.float64 if x.dtype == torch.float64 else tl.float32
        self.acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.num_warps = 4

    def args(self):
        return (self.H, self.W, self.tiles_w, self.tiles_per_img)

    def meta(self):
        return dict(BLOCK_H=self.block_h, BLOCK_W=self.block_w, COMPUTE=self.compute,
                    num_warps=self.num_warps)

    def per_sample(self, partials: torch.Tensor) -> torch.Tensor:
        return partials.view(self.B, self.tiles_per_img).sum(dim=1)


def _double_backward_reference(alpha: float, intensity_form: str):
    """(fused, ir, vis, w_ir, g, h_f, h_i, h_v, h_w) → grads of <h, ∇L·g> from the reference."""

    def fn(f, i, v, w, g, hf, hi, hv, hw):
        loss = fusion_loss_reference(f, i, v, w, alpha=alpha, intensity_form=intensity_form,
                                     reduction="none")
        first = torch.autograd.grad(loss, (f, i, v, w), g, create_graph=True)
        pairs = [(o, h) for o, h in zip(first, (hf, hi, hv, hw)) if h is not None]
        return torch.autograd.grad([o for o, _ in pairs], (f, i, v, w, g), [h for _, h in pairs],
                                   create_graph=True, allow_unused=True)

    return fn


class _FusionLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fused, ir, vis, w_ir, alpha, intensity_form):
        geo = _Launch(fused)
        code = torch.empty(fused.shape, dtype=torch.int8, device=fused.device)
        partials = torch.empty(geo.grid[0], dtype=geo.acc_dtype, device=fused.device)
        hi, lo = _split_alpha(alpha)
        _fwd_kernel[geo.grid](fused, ir, vis, w_ir, code, partials, *geo.args(), hi, lo,
                              RELEASED=intensity_form == "released", **geo.meta())
        ctx.save_for_backward(fused, ir, vis, w_ir, code)
        ctx.alpha, ctx.intensity_form = alpha, intensity_form
        return geo.per_sample(partials).to(fused.dtype)

    @staticmethod
    def backward(ctx, g):
        fused, ir, vis, w_ir, code = ctx.saved_tensors
        needs = needs_grad(ctx, 4)
        grads = _FusionLossBackward.apply(fused, ir, vis, w_ir, g, code, ctx.alpha,
                                          ctx.intensity_form, *needs)
        return (*grads, None, None)


class _FusionLossBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fused, ir, vis, w_ir, g, code, alpha, intensity_form, need_f, need_i, need_v,
                need_w):
        ctx.set_materialize_grads(False)
        geo = _Launch(fused)
        outs = [torch.empty_like(x) if n else None
                for x, n in zip((fused, ir, vis, w_ir), (need_f, need_i, need_v, need_w))]
        ptr = [o if o is not None else fused for o in outs]
        hi, lo = _split_alpha(alpha)
        # g is often the expanded gradient of a mean: read it through its stride, no copy
        _bwd_kernel[geo.grid](fused, ir, vis, w_ir, code, g, g.stride(0), *ptr, *geo.args(), hi, lo,
                              NEED_F=need_f, NEED_I=need_i, NEED_V=need_v, NEED_W=need_w,
                              RELEASED=intensity_form == "released", **geo.meta())
        ctx.save_for_backward(fused, ir, vis, w_ir, g, code)
        ctx.alpha, ctx.intensity_form = alpha, intensity_form
        return tuple(outs)

    @staticmethod
    def backward(ctx, h_f, h_i, h_v, h_w):
        fused, ir, vis, w_ir, g, code = ctx.saved_tensors
        needs = needs_grad(ctx, 5)
        grads = _FusionLossDoubleBackward.apply(fused, ir, vis, w_ir, g, h_f, h_i, h_v, h_w, code,
                                                ctx.alpha, ctx.intensity_form, *needs)
        return (*grads, None, None, None, None, None, None, None)


class _FusionLossDoubleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fused, ir, vis, w_ir, g, h_f, h_i, h_v, h_w, code, alpha, intensity_form,
                need_f, need_i, need_v, need_w, need_g):
        ctx.set_materialize_grads(False)
        geo = _Launch(fused)
        hs = [h.contiguous() if h is not None else None for h in (h_f, h_i, h_v, h_w)]
        outs = [torch.empty_like(x) if n else None
                for x, n in zip((fused, ir, vis, w_ir), (need_f, need_i, need_v, need_w))]
        partials = torch.empty(geo.grid[0] if need_g else 1, dtype=geo.acc_dtype,
                               device=fused.device)
        hi, lo = _split_alpha(alpha)
        _dd_kernel[geo.grid](fused, ir, vis, w_ir, code, g, g.stride(0),
                             *[h if h is not None else fused for h in hs],
                             *[o if o is not None else fused for o in outs], partials,
                             *geo.args(), hi, lo,
                             HAS_HF=hs[0] is not None, HAS_HI=hs[1] is not None,
                             HAS_HV=hs[2] is not None, HAS_HW=hs[3] is not None,
                             NEED_F=need_f, NEED_I=need_i, NEED_V=need_v, NEED_W=need_w,
                             NEED_G=need_g, RELEASED=intensity_form == "released", **geo.meta())
        gg = geo.per_sample(partials).to(g.dtype) if need_g else None
        ctx.save_for_backward(fused, ir, vis, w_ir, g, h_f, h_i, h_v, h_w)
        ctx.alpha, ctx.intensity_form = alpha, intensity_form
        return (*outs, gg)

    @staticmethod
    def backward(ctx, *upstream):
        # Third order: only for completeness (the meta step stops at second order).
        inputs = ctx.saved_tensors
        needs = needs_grad(ctx, 9)
        fn = _double_backward_reference(ctx.alpha, ctx.intensity_form)
        grads = recompute_vjp(fn, inputs, needs, upstream)
        return (*grads, *([None] * 8))


def fusion_loss_triton(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, w_ir: torch.Tensor,
                       alpha: float = 1.0, intensity_form: str = "paper",
                       reduction: str = "mean") -> torch.Tensor:
    """``fusion_loss_reference`` as fused Triton kernels (value, gradient and gradient of gradient).

    Inputs broadcast to one B×1×H×W shape; computation is fp32 (fp64 for fp64 inputs) and the
    result has the promoted input dtype.
    """
    if intensity_form not in INTENSITY_FORMS:
        raise ValueError(f"intensity_form must be one of {INTENSITY_FORMS}, got {intensity_form!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    dtype = fused.dtype
    for t in (ir, vis, w_ir):
        dtype = torch.promote_types(dtype, t.dtype)
    fused, ir, vis, w_ir = (t.to(dtype) for t in torch.broadcast_tensors(fused, ir, vis, w_ir))
    if fused.dim() != 4 or fused.shape[1] != 1:
        raise ValueError(f"fusion loss expects B×1×H×W inputs, got {tuple(fused.shape)}")
    if fused.numel() == 0:
        return fusion_loss_reference(fused, ir, vis, w_ir, alpha=alpha,
                                     intensity_form=intensity_form, reduction=reduction)
    fused, ir, vis, w_ir = (t.contiguous() for t in (fused, ir, vis, w_ir))
    # Triton launches on the current device; autograd's device threads handle the backward.
    with torch.cuda.device(fused.device) if fused.is_cuda else contextlib.nullcontext():
        per_sample = _FusionLoss.apply(fused, ir, vis, w_ir, float(alpha), intensity_form)
    return per_sample.mean() if reduction == "mean" else per_sample
