"""MDTA (transposed) attention core in Triton, differentiable to second order.

MDTA heads are 2–4 channels wide and the pixel axis is 65k–300k long, so every level of
differentiation has the same shape: long fp32 reductions of C×N tensors into C×C Gram matrices
(pixel axis split across programs), tiny C×C algebra per (batch, head), then a broadcast mix
``Y = M·X`` of C×N tensors with C×C coefficients. Each level is three launches: a Gram kernel,
a per-head finalize kernel (reduces the split partials, does the C×C algebra, sums the
temperature gradient over the batch), and a mix kernel. Heads are too narrow for ``tl.dot``
(≥16 per dim), so products are broadcast-multiply + ``tl.sum``.

Autograd structure:

* ``_MDTA``                  forward: Grams S = q·kᵀ, ‖q‖², ‖k‖² → P = softmax(t·Ŝ) → out = P·v.
* ``_MDTABackward``          = ``_MDTA.backward``: Gram dP = dO·vᵀ, C×C softmax/normalize backward
                             → dq, dk, dv (one mix pass), dt.
* ``_MDTADoubleBackward``    = ``_MDTABackward.backward``: all Grams the vector-Jacobian product
                             of the backward needs (one pass over q, k, v, dO and the incoming
                             grads), the reverse-mode C×C algebra by hand, one mix pass.
* ``_MDTADoubleBackward.backward`` (third order, never on the training path) re-runs the
  reference twice under autograd and takes its vector-Jacobian product.

The maths is ``mdta_attention_reference``; see ``tests/test_kernels_mdta.py``.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from .autograd_utils import needs_grad, recompute_vjp
from .mdta_reference import mdta_attention_reference

_EPS = tl.constexpr(1e-12)  # F.normalize's eps


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# ----------------------------------------------------------------------------------------------
# Small C×C helpers (CP = C padded to a power of two; padded rows/cols of every Gram are zero).
# ----------------------------------------------------------------------------------------------

@triton.jit
def _mat_idx(CP: tl.constexpr):
    return tl.arange(0, CP)[:, None] * CP + tl.arange(0, CP)[None, :]


@triton.jit
def _sum_mat(part_ptr, row, SPLITS, NSTAT: tl.constexpr, OFF: tl.constexpr, CP: tl.constexpr,
             SPLITS_P2: tl.constexpr, COMPUTE: tl.constexpr):
    sp = tl.arange(0, SPLITS_P2)[:, None, None]
    idx = _mat_idx(CP)[None, :, :]
    x = tl.load(part_ptr + (row * SPLITS + sp) * NSTAT + OFF + idx, mask=(sp < SPLITS) & (idx >= 0),
                other=0.0)
    return tl.sum(x.to(COMPUTE), axis=0)


@triton.jit
def _sum_vec(part_ptr, row, SPLITS, NSTAT: tl.constexpr, OFF: tl.constexpr, CP: tl.constexpr,
             SPLITS_P2: tl.constexpr, COMPUTE: tl.constexpr):
    sp = tl.arange(0, SPLITS_P2)[:, None]
    idx = tl.arange(0, CP)[None, :]
    x = tl.load(part_ptr + (row * SPLITS + sp) * NSTAT + OFF + idx, mask=(sp < SPLITS) & (idx >= 0),
                other=0.0)
    return tl.sum(x.to(COMPUTE), axis=0)


@triton.jit
def _attention(S, qq, kk, t, C: tl.constexpr, CP: tl.constexpr):
    """P = softmax_j(t·S_ij / (max(‖q_i‖, eps)·max(‖k_j‖, eps))) and the pieces its derivatives reuse."""
    a = tl.sqrt(qq)
    b = tl.sqrt(kk)
    mq = a >= _EPS  # where the clamp is inactive the norm passes gradient (torch clamp_min: >=)
    mk = b >= _EPS
    nq = tl.where(mq, a, _EPS)
    nk = tl.where(mk, b, _EPS)
    D = nq[:, None] * nk[None, :]
    Ahat = S / D
    col = tl.arange(0, CP)[None, :]
    A = tl.where(col < C, t * Ahat, float("-inf"))
    e = tl.exp(A - tl.max(A, axis=1)[:, None])
    P = e / tl.sum(e, axis=1)[:, None]
    return P, Ahat, D, a, b, mq, mk, nq, nk


@triton.jit
def _first_order(P, Ahat, D, mq, mk, nq, nk, dP, t):
    """Softmax + temperature + normalize backward on C×C: dq = G·k − r·q, dk = Gᵀ·q − s·k."""
    rho = tl.sum(P * dP, axis=1)
    dA = P * (dP - rho[:, None])
    E = t * dA
    G = E / D
    U = E * Ahat
    r = tl.where(mq, tl.sum(U, axis=1) / (nq * nq), 0.0)
    s = tl.where(mk, tl.sum(U, axis=0) / (nk * nk), 0.0)
    dt = tl.sum(tl.sum(dA * Ahat, axis=1), axis=0)
    return rho, dA, E, G, U, r, s, dt


@triton.jit
def _mm(M, X):
    # [i, n] = Σ_j M[i, j]·X[j, n]
    return tl.sum(M[:, :, None] * X[None, :, :], axis=1)


@triton.jit
def _mtm(M, X):
    # [j, n] = Σ_i M[i, j]·X[i, n]
    return tl.sum(M[:, :, None] * X[:, None, :], axis=0)


@triton.jit
def _load_rows(ptr, b, h, s_b, s_h, s_c, n, mask, COMPUTE: tl.constexpr, CP: tl.constexpr):
    base = b.to(tl.int64) * s_b + h.to(tl.int64) * s_h
    rows = tl.arange(0, CP)[:, None]
    return tl.load(ptr + base + rows * s_c + n, mask=mask, other=0.0).to(COMPUTE)


@triton.jit
def _store_rows(ptr, b, h, s_b, s_h, s_c, n, mask, x, CP: tl.constexpr):
    base = b.to(tl.int64) * s_b + h.to(tl.int64) * s_h
    rows = tl.arange(0, CP)[:, None]
    tl.store(ptr + base + rows * s_c + n, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gram(X, Y):
    return tl.sum(X[:, None, :] * Y[None, :, :], axis=2)


# One partial-statistics row (per batch·head, per split) holds, in order, the C×C Grams
# S = q·kᵀ, dP = dO·vᵀ, Z1 = hq·kᵀ + q·hkᵀ, Z3 = dO·hvᵀ, then the C-vectors ‖q‖², ‖k‖²,
# diag(hq·qᵀ), diag(hk·kᵀ); offsets are spelled out per kernel as constexprs.


def _nstat(cp: int) -> int:
    return 4 * cp * cp + 4 * cp


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

@triton.jit
def _gram_kernel(q_ptr, k_ptr, v_ptr, do_ptr, hq_ptr, hk_ptr, hv_ptr,
                 sq_b, sq_h, sq_c, sk_b, sk_h, sk_c, sv_b, sv_h, sv_c, sd_b, sd_h, sd_c,
                 shq_b, shq_h, shq_c, shk_b, shk_h, shk_c, shv_b, shv_h, shv_c,
                 part_ptr, N, NH, chunk,
                 WANT_QK: tl.constexpr, WANT_DP: tl.constexpr, HAS_HQ: tl.constexpr,
                 HAS_HK: tl.constexpr, HAS_HV: tl.constexpr, C: tl.constexpr, CP: tl.constexpr,
                 NSTAT: tl.constexpr, BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr):
    """Partial Grams over one chunk of the pixel axis for one (batch, head)."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    h = pid_bh % NH
    O_S: tl.constexpr = 0
    O_DP: tl.constexpr = CP * CP
    O_Z1: tl.constexpr = 2 * CP * CP
    O_Z3: tl.constexpr = 3 * CP * CP
    O_QQ: tl.constexpr = 4 * CP * CP
    O_KK: tl.constexpr = 4 * CP * CP + CP
    O_DHQ: tl.constexpr = 4 * CP * CP + 2 * CP
    O_DHK: tl.constexpr = 4 * CP * CP + 3 * CP
    rmask = tl.arange(0, CP)[:, None] < C
    acc_s = tl.zeros([CP, CP], COMPUTE)
    acc_dp = tl.zeros([CP, CP], COMPUTE)
    acc_z1 = tl.zeros([CP, CP], COMPUTE)
    acc_z3 = tl.zeros([CP, CP], COMPUTE)
    acc_qq = tl.zeros([CP], COMPUTE)
    acc_kk = tl.zeros([CP], COMPUTE)
    acc_hq = tl.zeros([CP], COMPUTE)
    acc_hk = tl.zeros([CP], COMPUTE)
    start = pid_s * chunk
    for n0 in range(start, start + chunk, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)[None, :]
        m = rmask & (n < N)
        if WANT_QK:
            q = _load_rows(q_ptr, b, h, sq_b, sq_h, sq_c, n, m, COMPUTE, CP)
            k = _load_rows(k_ptr, b, h, sk_b, sk_h, sk_c, n, m, COMPUTE, CP)
            acc_s += _gram(q, k)
            acc_qq += tl.sum(q * q, axis=1)
            acc_kk += tl.sum(k * k, axis=1)
            if HAS_HQ:
                hq = _load_rows(hq_ptr, b, h, shq_b, shq_h, shq_c, n, m, COMPUTE, CP)
                acc_z1 += _gram(hq, k)
                acc_hq += tl.sum(hq * q, axis=1)
            if HAS_HK:
                hk = _load_rows(hk_ptr, b, h, shk_b, shk_h, shk_c, n, m, COMPUTE, CP)
                acc_z1 += _gram(q, hk)
                acc_hk += tl.sum(hk * k, axis=1)
        if WANT_DP:
            do = _load_rows(do_ptr, b, h, sd_b, sd_h, sd_c, n, m, COMPUTE, CP)
            v = _load_rows(v_ptr, b, h, sv_b, sv_h, sv_c, n, m, COMPUTE, CP)
            acc_dp += _gram(do, v)
            if HAS_HV:
                hv = _load_rows(hv_ptr, b, h, shv_b, shv_h, shv_c, n, m, COMPUTE, CP)
                acc_z3 += _gram(do, hv)
    out = part_ptr + (pid_bh * tl.num_programs(0) + pid_s) * NSTAT
    idx = _mat_idx(CP)
    vec = tl.arange(0, CP)
    if WANT_QK:
        tl.store(out + O_S + idx, acc_s)
        tl.store(out + O_QQ + vec, acc_qq)
        tl.store(out + O_KK + vec, acc_kk)
        if HAS_HQ or HAS_HK:
            tl.store(out + O_Z1 + idx, acc_z1)
        if HAS_HQ:
            tl.store(out + O_DHQ + vec, acc_hq)
        if HAS_HK:
            tl.store(out + O_DHK + vec, acc_hk)
    if WANT_DP:
        tl.store(out + O_DP + idx, acc_dp)
        if HAS_HV:
            tl.store(out + O_Z3 + idx, acc_z3)


@triton.jit
def _finalize_fwd_kernel(part_ptr, t_ptr, stats_ptr, coef_ptr, B, NH, SPLITS,
                         C: tl.constexpr, CP: tl.constexpr, NSTAT: tl.constexpr,
                         SPLITS_P2: tl.constexpr, COMPUTE: tl.constexpr):
    h = tl.program_id(0)
    O_S: tl.constexpr = 0
    O_DP: tl.constexpr = CP * CP
    O_Z1: tl.constexpr = 2 * CP * CP
    O_Z3: tl.constexpr = 3 * CP * CP
    O_QQ: tl.constexpr = 4 * CP * CP
    O_KK: tl.constexpr = 4 * CP * CP + CP
    O_DHQ: tl.constexpr = 4 * CP * CP + 2 * CP
    O_DHK: tl.constexpr = 4 * CP * CP + 3 * CP
    idx = _mat_idx(CP)
    vec = tl.arange(0, CP)
    t = tl.load(t_ptr + h).to(COMPUTE)
    for b in range(B):
        row = b * NH + h
        S = _sum_mat(part_ptr, row, SPLITS, NSTAT, O_S, CP, SPLITS_P2, COMPUTE)
        qq = _sum_vec(part_ptr, row, SPLITS, NSTAT, O_QQ, CP, SPLITS_P2, COMPUTE)
        kk = _sum_vec(part_ptr, row, SPLITS, NSTAT, O_KK, CP, SPLITS_P2, COMPUTE)
        P, Ahat, D, a, bb, mq, mk, nq, nk = _attention(S, qq, kk, t, C, CP)
        st = stats_ptr + row * (CP * CP + 2 * CP)
        tl.store(st + idx, S)
        tl.store(st + CP * CP + vec, qq)
        tl.store(st + CP * CP + CP + vec, kk)
        tl.store(coef_ptr + row * CP * CP + idx, P)


@triton.jit
def _mix_fwd_kernel(v_ptr, sv_b, sv_h, sv_c, coef_ptr, out_ptr, so_b, so_h, so_c, N, NH,
                    C: tl.constexpr, CP: tl.constexpr, BLOCK_N: tl.constexpr,
                    COMPUTE: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    h = pid_bh % NH
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    m = (tl.arange(0, CP)[:, None] < C) & (n < N)
    P = tl.load(coef_ptr + pid_bh * CP * CP + _mat_idx(CP))
    v = _load_rows(v_ptr, b, h, sv_b, sv_h, sv_c, n, m, COMPUTE, CP)
    _store_rows(out_ptr, b, h, so_b, so_h, so_c, n, m, _mm(P, v), CP)


@triton.jit
def _finalize_bwd_kernel(part_ptr, stats_ptr, t_ptr, coef_ptr, dt_ptr, B, NH, SPLITS,
                         C: tl.constexpr, CP: tl.constexpr, NSTAT: tl.constexpr,
                         SPLITS_P2: tl.constexpr, COMPUTE: tl.constexpr):
    h = tl.program_id(0)
    O_S: tl.constexpr = 0
    O_DP: tl.constexpr = CP * CP
    O_Z1: tl.constexpr = 2 * CP * CP
    O_Z3: tl.constexpr = 3 * CP * CP
    O_QQ: tl.constexpr = 4 * CP * CP
    O_KK: tl.constexpr = 4 * CP * CP + CP
    O_DHQ: tl.constexpr = 4 * CP * CP + 2 * CP
    O_DHK: tl.constexpr = 4 * CP * CP + 3 * CP
    idx = _mat_idx(CP)
    vec = tl.arange(0, CP)
    t = tl.load(t_ptr + h).to(COMPUTE)
    dt = tl.sum(tl.zeros([2], COMPUTE), axis=0)  # a typed 0-d accumulator
    NCOEF: tl.constexpr = 2 * CP * CP + 2 * CP
    for b in range(B):
        row = b * NH + h
        st = stats_ptr + row * (CP * CP + 2 * CP)
        S = tl.load(st + idx)
        qq = tl.load(st + CP * CP + vec)
        kk = tl.load(st + CP * CP + CP + vec)
        dP = _sum_mat(part_ptr, row, SPLITS, NSTAT, O_DP, CP, SPLITS_P2, COMPUTE)
        P, Ahat, D, a, bb, mq, mk, nq, nk = _attention(S, qq, kk, t, C, CP)
        rho, dA, E, G, U, r, s, dt_b = _first_order(P, Ahat, D, mq, mk, nq, nk, dP, t)
        dt += dt_b
        co = coef_ptr + row * NCOEF
        tl.store(co + idx, G)
        tl.store(co + CP * CP + idx, P)
        tl.store(co + 2 * CP * CP + vec, r)
        tl.store(co + 2 * CP * CP + CP + vec, s)
    tl.store(dt_ptr + h, dt)


@triton.jit
def _mix_bwd_kernel(q_ptr, k_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr,
                    sq_b, sq_h, sq_c, sk_b, sk_h, sk_c, sd_b, sd_h, sd_c,
                    so_b, so_h, so_c, coef_ptr, N, NH,
                    NEED_Q: tl.constexpr, NEED_K: tl.constexpr, NEED_V: tl.constexpr,
                    C: tl.constexpr, CP: tl.constexpr, BLOCK_N: tl.constexpr,
                    COMPUTE: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    h = pid_bh % NH
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    m = (tl.arange(0, CP)[:, None] < C) & (n < N)
    idx = _mat_idx(CP)
    vec = tl.arange(0, CP)
    co = coef_ptr + pid_bh * (2 * CP * CP + 2 * CP)
    if NEED_Q or NEED_K:
        G = tl.load(co + idx)
        q = _load_rows(q_ptr, b, h, sq_b, sq_h, sq_c, n, m, COMPUTE, CP)
        k = _load_rows(k_ptr, b, h, sk_b, sk_h, sk_c, n, m, COMPUTE, CP)
        if NEED_Q:
            r = tl.load(co + 2 * CP * CP + vec)
            _store_rows(dq_ptr, b, h, so_b, so_h, so_c, n, m, _mm(G, k) - r[:, None] * q, CP)
        if NEED_K:
            s = tl.load(co + 2 * CP * CP + CP + vec)
            _store_rows(dk_ptr, b, h, so_b, so_h, so_c, n, m, _mtm(G, q) - s[:, None] * k, CP)
    if NEED_V:
        P = tl.load(co + CP * CP + idx)
        do = _load_rows(do_ptr, b, h, sd_b, sd_h, sd_c, n, m, COMPUTE, CP)
        _store_rows(dv_ptr, b, h, so_b, so_h, so_c, n, m, _mtm(P, do), CP)


@triton.jit
def _finalize_dd_kernel(part_ptr, t_ptr, ht_ptr, coef_ptr, gt_ptr, B, NH, SPLITS,
                        HAS_HQ: tl.constexpr, HAS_HK: tl.constexpr, HAS_HV: tl.constexpr,
                        HAS_HT: tl.constexpr, C: tl.constexpr, CP: tl.constexpr,
                        NSTAT: tl.constexpr, SPLITS_P2: tl.constexpr, COMPUTE: tl.constexpr):
    """Reverse-mode through the C×C part of the backward.

    The backward's outputs paired with the incoming grads (hq, hk, hv, ht) give the scalar
    φ = <G, Z1> − <r, dhq> − <s, dhk> + <P, Z3> + ht·dt, with Z1 = hq·kᵀ + q·hkᵀ, Z3 = dO·hvᵀ,
    dhq = diag(hq·qᵀ), dhk = diag(hk·kᵀ). φ depends on the big tensors only through Grams, so
    its gradient is C×C adjoints of (S, ‖q‖², ‖k‖², dP, Z1, dhq, dhk, Z3) mixed back over N.
    """
    h = tl.program_id(0)
    O_S: tl.constexpr = 0
    O_DP: tl.constexpr = CP * CP
    O_Z1: tl.constexpr = 2 * CP * CP
    O_Z3: tl.constexpr = 3 * CP * CP
    O_QQ: tl.constexpr = 4 * CP * CP
    O_KK: tl.constexpr = 4 * CP * CP + CP
    O_DHQ: tl.constexpr = 4 * CP * CP + 2 * CP
    O_DHK: tl.constexpr = 4 * CP * CP + 3 * CP
    idx = _mat_idx(CP)
    vec = tl.arange(0, CP)
    t = tl.load(t_ptr + h).to(COMPUTE)
    if HAS_HT:
        ht = tl.load(ht_ptr + h).to(COMPUTE)
    else:
        ht = tl.sum(tl.zeros([2], COMPUTE), axis=0)
    gt = tl.sum(tl.zeros([2], COMPUTE), axis=0)
    NCOEF: tl.constexpr = 4 * CP * CP + 4 * CP
    for b in range(B):
        row = b * NH + h
        S = _sum_mat(part_ptr, row, SPLITS, NSTAT, O_S, CP, SPLITS_P2, COMPUTE)
        qq = _sum_vec(part_ptr, row, SPLITS, NSTAT, O_QQ, CP, SPLITS_P2, COMPUTE)
        kk = _sum_vec(part_ptr, row, SPLITS, NSTAT, O_KK, CP, SPLITS_P2, COMPUTE)
        dP = _sum_mat(part_ptr, row, SPLITS, NSTAT, O_DP, CP, SPLITS_P2, COMPUTE)
        P, Ahat, D, a, bb, mq, mk, nq, nk = _attention(S, qq, kk, t, C, CP)
        rho, dA, E, G, U, r, s, dt_b = _first_order(P, Ahat, D, mq, mk, nq, nk, dP, t)
        zero_m = tl.zeros([CP, CP], COMPUTE)
        zero_v = tl.zeros([CP], COMPUTE)
        if HAS_HQ or HAS_HK:
            g_bar = _sum_mat(part_ptr, row, SPLITS, NSTAT, O_Z1, CP, SPLITS_P2, COMPUTE)
        else:
            g_bar = zero_m
        if HAS_HQ:
            r_bar = -_sum_vec(part_ptr, row, SPLITS, NSTAT, O_DHQ, CP, SPLITS_P2, COMPUTE)
        else:
            r_bar = zero_v
        if HAS_HK:
            s_bar = -_sum_vec(part_ptr, row, SPLITS, NSTAT, O_DHK, CP, SPLITS_P2, COMPUTE)
        else:
            s_bar = zero_v
        if HAS_HV:
            p_bar = _sum_mat(part_ptr, row, SPLITS, NSTAT, O_Z3, CP, SPLITS_P2, COMPUTE)
        else:
            p_bar = zero_m
        # r = mq·ΣU/nq², s = mk·ΣU/nk²
        R_bar = tl.where(mq, r_bar / (nq * nq), 0.0)
        nq_bar = tl.where(mq, -2.0 * r_bar * r / nq, 0.0)
        Sc_bar = tl.where(mk, s_bar / (nk * nk), 0.0)
        nk_bar = tl.where(mk, -2.0 * s_bar * s / nk, 0.0)
        U_bar = R_bar[:, None] + Sc_bar[None, :]
        # U = E·Â, G = E/D
        E_bar = U_bar * Ahat + g_bar / D
        Ahat_bar = U_bar * E + ht * dA
        D_bar = -g_bar * G / D
        # E = t·dA, dt = Σ dA·Â
        dA_bar = t * E_bar + ht * Ahat
        t_bar = tl.sum(tl.sum(E_bar * dA, axis=1), axis=0)
        # dA = P·(dP − ρ), ρ = Σ_j P·dP
        p_bar += dA_bar * (dP - rho[:, None])
        dP_bar = dA_bar * P
        rho_bar = -tl.sum(dA_bar * P, axis=1)
        p_bar += rho_bar[:, None] * dP
        dP_bar += rho_bar[:, None] * P
        # P = softmax(A), A = t·Â
        A_bar = P * (p_bar - tl.sum(p_bar * P, axis=1)[:, None])
        Ahat_bar += t * A_bar
        t_bar += tl.sum(tl.sum(A_bar * Ahat, axis=1), axis=0)
        # Â = S/D, D = nq·nkᵀ
        S_bar = Ahat_bar / D
        D_bar += -Ahat_bar * Ahat / D
        nq_bar += tl.sum(D_bar * nk[None, :], axis=1)
        nk_bar += tl.sum(D_bar * nq[:, None], axis=0)
        # nq = max(√qq, eps)
        qq2 = tl.where(mq, nq_bar / tl.where(mq, a, 1.0), 0.0)  # 2·∂φ/∂qq
        kk2 = tl.where(mk, nk_bar / tl.where(mk, bb, 1.0), 0.0)
        gt += t_bar
        co = coef_ptr + row * NCOEF
        tl.store(co + idx, S_bar)
        tl.store(co + CP * CP + idx, G)
        tl.store(co + 2 * CP * CP + idx, dP_bar)
        tl.store(co + 3 * CP * CP + idx, P)
        tl.store(co + 4 * CP * CP + vec, qq2)
        tl.store(co + 4 * CP * CP + CP + vec, kk2)
        tl.store(co + 4 * CP * CP + 2 * CP + vec, r)
        tl.store(co + 4 * CP * CP + 3 * CP + vec, s)
    tl.store(gt_ptr + h, gt)


@triton.jit
def _mix_dd_kernel(q_ptr, k_ptr, v_ptr, do_ptr, hq_ptr, hk_ptr, hv_ptr,
                   gq_ptr, gk_ptr, gv_ptr, gdo_ptr,
                   sq_b, sq_h, sq_c, sk_b, sk_h, sk_c, sv_b, sv_h, sv_c, sd_b, sd_h, sd_c,
                   shq_b, shq_h, shq_c, shk_b, shk_h, shk_c, shv_b, shv_h, shv_c,
                   so_b, so_h, so_c, coef_ptr, N, NH,
                   HAS_HQ: tl.constexpr, HAS_HK: tl.constexpr, HAS_HV: tl.constexpr,
                   NEED_Q: tl.constexpr, NEED_K: tl.constexpr, NEED_V: tl.constexpr,
                   NEED_DO: tl.constexpr, C: tl.constexpr, CP: tl.constexpr,
                   BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    h = pid_bh % NH
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    m = (tl.arange(0, CP)[:, None] < C) & (n < N)
    idx = _mat_idx(CP)
    vec = tl.arange(0, CP)
    co = coef_ptr + pid_bh * (4 * CP * CP + 4 * CP)
    if NEED_Q or NEED_K:
        S_bar = tl.load(co + idx)
        G = tl.load(co + CP * CP + idx)
        q = _load_rows(q_ptr, b, h, sq_b, sq_h, sq_c, n, m, COMPUTE, CP)
        k = _load_rows(k_ptr, b, h, sk_b, sk_h, sk_c, n, m, COMPUTE, CP)
        if HAS_HQ:
            hq = _load_rows(hq_ptr, b, h, shq_b, shq_h, shq_c, n, m, COMPUTE, CP)
        if HAS_HK:
            hk = _load_rows(hk_ptr, b, h, shk_b, shk_h, shk_c, n, m, COMPUTE, CP)
        if NEED_Q:
            qq2 = tl.load(co + 4 * CP * CP + vec)
            gq = _mm(S_bar, k) + qq2[:, None] * q
            if HAS_HK:
                gq += _mm(G, hk)
            if HAS_HQ:
                r = tl.load(co + 4 * CP * CP + 2 * CP + vec)
                gq -= r[:, None] * hq
            _store_rows(gq_ptr, b, h, so_b, so_h, so_c, n, m, gq, CP)
        if NEED_K:
            kk2 = tl.load(co + 4 * CP * CP + CP + vec)
            gk = _mtm(S_bar, q) + kk2[:, None] * k
            if HAS_HQ:
                gk += _mtm(G, hq)
            if HAS_HK:
                s = tl.load(co + 4 * CP * CP + 3 * CP + vec)
                gk -= s[:, None] * hk
            _store_rows(gk_ptr, b, h, so_b, so_h, so_c, n, m, gk, CP)
    if NEED_V or NEED_DO:
        dP_bar = tl.load(co + 2 * CP * CP + idx)
        if NEED_V:
            do = _load_rows(do_ptr, b, h, sd_b, sd_h, sd_c, n, m, COMPUTE, CP)
            _store_rows(gv_ptr, b, h, so_b, so_h, so_c, n, m, _mtm(dP_bar, do), CP)
        if NEED_DO:
            v = _load_rows(v_ptr, b, h, sv_b, sv_h, sv_c, n, m, COMPUTE, CP)
            gdo = _mm(dP_bar, v)
            if HAS_HV:
                P = tl.load(co + 3 * CP * CP + idx)
                hv = _load_rows(hv_ptr, b, h, shv_b, shv_h, shv_c, n, m, COMPUTE, CP)
                gdo += _mm(P, hv)
            _store_rows(gdo_ptr, b, h, so_b, so_h, so_c, n, m, gdo, CP)


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------

_SM_COUNT: dict[int, int] = {}
# The finalize kernels reduce all splits of a row in one tile; past 64 the tile gets large.
_MAX_SPLITS = 64


class _Plan:
    """Block sizes and the pixel-axis split for one B×heads×C×N problem."""

    def __init__(self, x: torch.Tensor):
        self.B, self.NH, self.C, self.N = x.shape
        self.CP = _next_pow2(self.C)
        self.compute = tl.float64 if x.dtype == torch.float64 else tl.float32
        self.acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.nstat = _nstat(self.CP)
        bh = self.B * self.NH
        if x.is_cuda:
            dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
            if dev not in _SM_COUNT:
                _SM_COUNT[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
            # CP·CP·BLOCK_N broadcast products per step: 4096 keeps it at 32 registers a thread.
            self.block_n = max(128, 4096 // (self.CP * self.CP))
            target = 4 * _SM_COUNT[dev]
        else:
            # The interpreter is slow per program: tiny blocks still exercise splits and masks.
            self.block_n = int(os.environ.get("TDFUSION_MDTA_INTERPRET_BLOCK", "16"))
            target = 8
        steps = triton.cdiv(self.N, self.block_n)
        splits = max(1, min(steps, triton.cdiv(target, bh), _MAX_SPLITS))
        self.chunk = triton.cdiv(steps, splits) * self.block_n
        self.splits = triton.cdiv(self.N, self.chunk)
        self.splits_p2 = _next_pow2(self.splits)
        self.gram_grid = (self.splits, bh)
        self.mix_grid = (triton.cdiv(self.N, self.block_n), bh)
        self.num_warps = 4

    def partials(self, device) -> torch.Tensor:
        return torch.empty((self.B * self.NH, self.splits, self.nstat), dtype=self.acc_dtype,
                           device=device)


def _s(x: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if x is None else (x.stride(0), x.stride(1), x.stride(2))


def _contiguous_strides(shape) -> tuple[int, int, int]:
    _, nh, c, n = shape
    return (nh * c * n, c * n, n)


def _rowmajor(x: torch.Tensor | None) -> torch.Tensor | None:
    # Kernels index rows by strides but need unit stride along the pixel axis.
    if x is None or x.stride(-1) == 1:
        return x
    return x.contiguous()


def _launch_gram(plan: _Plan, q, k, v, do, hq=None, hk=None, hv=None, want_qk=True,
                 want_dp=False) -> torch.Tensor:
    ref = q if q is not None else do
    part = plan.partials(ref.device)
    _gram_kernel[plan.gram_grid](
        *[x if x is not None else ref for x in (q, k, v, do, hq, hk, hv)],
        *_s(q), *_s(k), *_s(v), *_s(do), *_s(hq), *_s(hk), *_s(hv),
        part, plan.N, plan.NH, plan.chunk,
        WANT_QK=want_qk, WANT_DP=want_dp, HAS_HQ=hq is not None, HAS_HK=hk is not None,
        HAS_HV=hv is not None, C=plan.C, CP=plan.CP, NSTAT=plan.nstat, BLOCK_N=plan.block_n,
        COMPUTE=plan.compute, num_warps=plan.num_warps)
    return part


def _double_backward_reference(q, k, v, t, do, hq, hk, hv, ht):
    """Grads w.r.t. (q, k, v, t, dO) of <h, VJP of the reference at dO>, by autograd twice."""
    out = mdta_attention_reference(q, k, v, t)
    first = torch.autograd.grad(out, (q, k, v, t), do, create_graph=True)
    pairs = [(o, h) for o, h in zip(first, (hq, hk, hv, ht)) if h is not None]
    return torch.autograd.grad([o for o, _ in pairs], (q, k, v, t, do), [h for _, h in pairs],
                               create_graph=True, allow_unused=True)


class _MDTA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, t):
        plan = _Plan(q)
        part = _launch_gram(plan, q, k, None, None, want_qk=True)
        bh = plan.B * plan.NH
        stats = torch.empty((bh, plan.CP * plan.CP + 2 * plan.CP), dtype=plan.acc_dtype,
                            device=q.device)
        coef = torch.empty((bh, plan.CP * plan.CP), dtype=plan.acc_dtype, device=q.device)
        _finalize_fwd_kernel[(plan.NH,)](part, t, stats, coef, plan.B, plan.NH, plan.splits,
                                         C=plan.C, CP=plan.CP, NSTAT=plan.nstat,
                                         SPLITS_P2=plan.splits_p2, COMPUTE=plan.compute)
        out = torch.empty((plan.B, plan.NH, plan.C, plan.N), dtype=q.dtype, device=q.device)
        _mix_fwd_kernel[plan.mix_grid](v, *_s(v), coef, out, *_s(out), plan.N, plan.NH,
                                       C=plan.C, CP=plan.CP, BLOCK_N=plan.block_n,
                                       COMPUTE=plan.compute, num_warps=plan.num_warps)
        # stats (S, ‖q‖², ‖k‖²) is a cache of a function of q and k, not an independent input.
        ctx.save_for_backward(q, k, v, t, stats)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, t, stats = ctx.saved_tensors
        return _MDTABackward.apply(q, k, v, t, do, stats, *needs_grad(ctx, 4))


class _MDTABackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, t, do, stats, need_q, need_k, need_v, need_t):
        ctx.set_materialize_grads(False)
        # Kernels get a row-major copy; the original is saved so higher orders reach it.
        do_rm = _rowmajor(do)
        plan = _Plan(q)
        part = _launch_gram(plan, None, None, v, do_rm, want_qk=False, want_dp=True)
        bh = plan.B * plan.NH
        coef = torch.empty((bh, 2 * plan.CP * plan.CP + 2 * plan.CP), dtype=plan.acc_dtype,
                           device=q.device)
        dt = torch.empty((plan.NH,), dtype=plan.acc_dtype, device=q.device)
        _finalize_bwd_kernel[(plan.NH,)](part, stats, t, coef, dt, plan.B, plan.NH, plan.splits,
                                         C=plan.C, CP=plan.CP, NSTAT=plan.nstat,
                                         SPLITS_P2=plan.splits_p2, COMPUTE=plan.compute)
        shape = (plan.B, plan.NH, plan.C, plan.N)
        outs = [torch.empty(shape, dtype=x.dtype, device=x.device) if need else None
                for x, need in ((q, need_q), (k, need_k), (v, need_v))]
        if need_q or need_k or need_v:
            _mix_bwd_kernel[plan.mix_grid](
                q, k, do_rm, *[o if o is not None else q for o in outs],
                *_s(q), *_s(k), *_s(do_rm), *_contiguous_strides(shape), coef, plan.N,
                plan.NH, NEED_Q=need_q, NEED_K=need_k, NEED_V=need_v, C=plan.C, CP=plan.CP,
                BLOCK_N=plan.block_n, COMPUTE=plan.compute, num_warps=plan.num_warps)
        ctx.save_for_backward(q, k, v, t, do)
        return (*outs, dt.to(t.dtype) if need_t else None)

    @staticmethod
    def backward(ctx, hq, hk, hv, ht):
        q, k, v, t, do = ctx.saved_tensors
        grads = _MDTADoubleBackward.apply(q, k, v, t, do, hq, hk, hv, ht, *needs_grad(ctx, 5))
        return (*grads, None, None, None, None, None)


class _MDTADoubleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, t, do, hq, hk, hv, ht, need_q, need_k, need_v, need_t, need_do):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, t, do, hq, hk, hv, ht)  # originals, not the copies below
        do, hq, hk, hv = _rowmajor(do), _rowmajor(hq), _rowmajor(hk), _rowmajor(hv)
        ht = ht.contiguous() if ht is not None else None  # often an expand (stride 0) of a sum
        plan = _Plan(q)
        part = _launch_gram(plan, q, k, v, do, hq, hk, hv, want_qk=True, want_dp=True)
        bh = plan.B * plan.NH
        coef = torch.empty((bh, 4 * plan.CP * plan.CP + 4 * plan.CP), dtype=plan.acc_dtype,
                           device=q.device)
        gt = torch.empty((plan.NH,), dtype=plan.acc_dtype, device=q.device)
        _finalize_dd_kernel[(plan.NH,)](
            part, t, ht if ht is not None else t, coef, gt, plan.B, plan.NH, plan.splits,
            HAS_HQ=hq is not None, HAS_HK=hk is not None, HAS_HV=hv is not None,
            HAS_HT=ht is not None, C=plan.C, CP=plan.CP, NSTAT=plan.nstat,
            SPLITS_P2=plan.splits_p2, COMPUTE=plan.compute)
        shape = (plan.B, plan.NH, plan.C, plan.N)
        outs = [torch.empty(shape, dtype=x.dtype, device=x.device) if need else None
                for x, need in ((q, need_q), (k, need_k), (v, need_v), (do, need_do))]
        if any(o is not None for o in outs):
            _mix_dd_kernel[plan.mix_grid](
                q, k, v, do, *[x if x is not None else q for x in (hq, hk, hv)],
                *[o if o is not None else q for o in outs],
                *_s(q), *_s(k), *_s(v), *_s(do), *_s(hq), *_s(hk), *_s(hv),
                *_contiguous_strides(shape), coef, plan.N, plan.NH,
                HAS_HQ=hq is not None, HAS_HK=hk is not None, HAS_HV=hv is not None,
                NEED_Q=need_q, NEED_K=need_k, NEED_V=need_v, NEED_DO=need_do, C=plan.C,
                CP=plan.CP, BLOCK_N=plan.block_n, COMPUTE=plan.compute,
                num_warps=plan.num_warps)
        gq, gk, gv, gdo = outs
        return gq, gk, gv, (gt.to(t.dtype) if need_t else None), gdo

    @staticmethod
    def backward(ctx, *upstream):
        # Third order: only for completeness (the meta step stops at second order).
        grads = recompute_vjp(_double_backward_reference, ctx.saved_tensors, needs_grad(ctx, 9),
                               upstream)
        return (*grads, None, None, None, None, None)


def mdta_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          temperature: torch.Tensor) -> torch.Tensor:
    """``mdta_attention_reference`` as Triton kernels (value, gradient and gradient of gradient).

    q, k, v: B×heads×C×N (any strides; a non-unit pixel stride costs a copy); temperature: one
    value per head (or a single value). Reductions run in fp32 (fp64 for fp64 inputs); the output
    has the inputs' (promoted) dtype.
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one B×heads×C×N shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    heads = q.shape[1]
    t = temperature.reshape(-1)
    if t.numel() == 1:
        t = t.expand(heads)
    if t.numel() != heads:
        raise ValueError(f"temperature has {temperature.numel()} values for {heads} heads")
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = (_rowmajor(x.to(dtype)) for x in (q, k, v))
    if q.shape[-1] == 0 or q.shape[0] == 0 or heads == 0 or q.shape[2] == 0:
        return mdta_attention_reference(q, k, v, temperature)
    # Triton launches on the current device; autograd's device threads handle the backward.
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        return _MDTA.apply(q, k, v, t.contiguous())
