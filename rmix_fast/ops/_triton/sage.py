"""Triton kernels and launchers of SAGE: four launches per forward, one per backward, no atomics, no host
read of any tensor value.

1. ``sage_saliency_kernel``, (sample, pixel block) programs: s = mean_c |grad| per pixel, reading grad once
   at its own strides (channels summed in order, as torch does), into a (B, H, W) scratch map.
2. ``sage_blur_kernel``, one program per sample: the separable Gaussian blur (rows, then columns; taps in
   index order; reflect padding), its sum, the fallback to a uniform map, and n = s~ / sum s~. n is the
   reference's ``s / s.sum()`` up to the order of the sum, so every later a = max(lam, 1e-12) * n and
   c = max(1 - lam, 1e-12) * n is one rounded multiply, as in the reference. One program per sample makes
   the sum a plain in-program reduction: no partials to hand to the later kernels, no atomics.
3. ``sage_search_kernel``, (sample, block of KB candidates) programs: streams the image in tiles, a once
   per tile for its KB candidates, c gathered at p + d with a bounds mask (0 outside), and accumulates
   score(d) = sum_p a M_d + c_d (1 - M_d) with every term rounded as in the reference; writes (B, K) scores.
4. ``sage_blend_kernel``, B * tiles + B programs. A tile program takes d* (the first argmax of its
   sample's scores), computes M per element on the fly and writes mixed = M own + (1 - M) partner(p + d*).
   The last B programs, one per sample, write the sample's weight map, lam_eff = mean M (summed in the
   program: deterministic) and shift = d*, evaluating M with the same code as the tile programs.

``sage_backward_kernel`` is the gradient w.r.t. x, a gather: grad_x[j] = M_j g_j + (1 - M_i) g_i at p - d*_i
for the i with perm[i] = j (found by scanning perm in the kernel, so it is one launch).

Nothing drawn per batch is specialised on: perm, lam, the candidate count K and the offsets' strides are
runtime arguments, and the tile sizes depend on the image shape only, so one compiled variant per (dtype,
layout, image shape) serves every draw (the blend and backward walk the images as the blend engine does,
``blend_regions._tile``, which specialises on the shape). In-sample image offsets are 32-bit unless a
sample spans 2**31 elements (``WIDE``); the (B, H, W) maps need H * W < 2**31.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops._triton._launch import (
    COMPILE_OPTIONS,
    INT32_MAX,
    TL_DTYPE,
    Launch,
    as_index,
    as_levels,
    device_guard,
    layout_of,
    needs_wide_offsets,
)
from rmix_fast.ops._triton._math import div_rn
from rmix_fast.ops._triton.blend_regions import _offsets, _tile, _tiling
from rmix_fast.reference.sage import blur_weights

_SALIENCY_BLOCK = 1024  # pixels one saliency program reduces
_BLUR_TILE = 2048  # pixels of one blur step
_BLUR_MAX_COLUMNS = 64
_SEARCH_PIXELS = 256  # pixels of one search tile, shared by the program's candidates
_SEARCH_MAX_COLUMNS = 32
_SEARCH_TILE = 2048  # candidate x pixel evaluations of one search step
_MAX_CANDIDATES_PER_PROGRAM = 16
_ARGMAX_BLOCK = 256  # scores read per step of the argmax
_PIXEL_BLOCK = 1024  # pixels per step of the per-sample weight / lam_eff loop
_PERM_BLOCK = 256  # perm entries per step of the backward's inverse lookup
_BLUR_WARPS = 8  # one program per sample: give it more threads


@triton.jit
def _reflect(i, n):
    """``reference.sage.reflect_index``: i reflected into [0, n) without repeating the edge, repeatedly;
    n = 1 maps to 0 (the period is clamped to 1). The remainder is made non-negative explicitly because
    compiled code truncates (C) where the interpreter floors (numpy)."""
    period = tl.maximum(2 * (n - 1), 1)
    m = i % period
    m = tl.where(m < 0, m + period, m)
    return tl.where(m < n, m, period - m)


@triton.jit
def _scales(lam_ptr, b, ACC: tl.constexpr):
    """(max(lam, 1e-12), max(1 - lam, 1e-12)) of sample b; the floor built in ACC, not as a float32 literal."""
    lam = tl.load(lam_ptr + b).to(ACC)
    floor = tl.full([], 1e-12, ACC)
    return tl.maximum(lam, floor), tl.maximum(1 - lam, floor)


@triton.jit
def _mask_value(a, c, ACC: tl.constexpr):
    """M = a / max(a + c, 1e-16)."""
    return div_rn(a, tl.maximum(a + c, tl.full([], 1e-16, ACC)), ACC)


@triton.jit
def _weight_at(norm_ptr, b, partner, h, w, dy, dx, H, W, lam_a, lam_c, ok, ACC: tl.constexpr):
    """M of sample b at pixels (h, w) for the shift (dy, dx): a from n[b](p), c from n[partner](p + d), 0 outside."""
    hw = H * W
    a = lam_a * tl.load(norm_ptr + b * hw + h * W + w, mask=ok, other=0.0)
    qh = h + dy
    qw = w + dx
    inside = ok & (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
    c = lam_c * tl.load(norm_ptr + partner * hw + qh * W + qw, mask=inside, other=0.0)
    return _mask_value(a, c, ACC)


@triton.jit
def _first_argmax(row_ptr, K, BLOCK: tl.constexpr):
    """Index of the first largest of the K values at ``row_ptr`` (torch.argmax's rule)."""
    best = tl.load(row_ptr)
    best_k = tl.full([], 0, tl.int32)
    for k0 in range(0, K, BLOCK):
        ks = k0 + tl.arange(0, BLOCK)
        v = tl.load(row_ptr + ks, mask=ks < K, other=-float("inf"))
        top = tl.max(v, axis=0)
        first = tl.min(tl.where(v == top, ks, K), axis=0)
        take = top > best  # strictly: an equal later maximum never displaces an earlier one
        best_k = tl.where(take, first, best_k)
        best = tl.where(take, top, best)
    return best_k


@triton.jit(do_not_specialize=["H", "W", "n_blocks"])
def sage_saliency_kernel(
    grad_ptr,
    sal_ptr,
    sg_b,
    sg_c,
    sg_h,
    sg_w,
    H,
    W,
    n_blocks,
    C: tl.constexpr,
    BLOCK: tl.constexpr,
    WIDE: tl.constexpr,
    ACC: tl.constexpr,
):
    """sal[b, p] = (sum over c in order of |grad[b, c, p]|) / C: the reference's mean (sum, then divide)."""
    pid = tl.program_id(0)
    block = pid % n_blocks
    b = (pid // n_blocks).to(tl.int64)
    p = block * BLOCK + tl.arange(0, BLOCK)
    ok = p < H * W
    h = p // W
    w = p % W
    if WIDE:
        offs = h.to(tl.int64) * sg_h + w.to(tl.int64) * sg_w
    else:
        offs = h * sg_h + w * sg_w
    ptrs = grad_ptr + b * sg_b + offs
    total = tl.zeros([BLOCK], dtype=ACC)
    for _ in tl.static_range(C):
        total += tl.abs(tl.load(ptrs, mask=ok, other=0.0).to(ACC))
        ptrs += sg_c  # pointer arithmetic is 64-bit: c * stride_c never overflows
    tl.store(sal_ptr + b * H * W + p, div_rn(total, tl.full([BLOCK], C, ACC), ACC), mask=ok)


@triton.jit(do_not_specialize=["H", "W", "taps"])
def sage_blur_kernel(
    sal_ptr,
    taps_ptr,
    norm_ptr,
    H,
    W,
    taps,
    BH: tl.constexpr,
    BW: tl.constexpr,
    ACC: tl.constexpr,
):
    """norm[b] = blur(sal[b]) / its sum, or 1 / (H W) everywhere when that sum is 0 or not finite.

    Three passes over the sample, as the reference computes it: rows (sal -> norm), columns (norm -> sal,
    whose s is no longer needed) with the sum, then the normalisation (sal -> norm). Each pass reads what
    other threads of the program stored in the one before, hence the barriers."""
    b = tl.program_id(0).to(tl.int64)
    sal = sal_ptr + b * H * W
    norm = norm_ptr + b * H * W
    half = (taps - 1) // 2
    for h0 in range(0, H, BH):
        rows = (h0 + tl.arange(0, BH))[:, None]
        for w0 in range(0, W, BW):
            cols = (w0 + tl.arange(0, BW))[None, :]
            ok = (rows < H) & (cols < W)
            out = tl.zeros([BH, BW], dtype=ACC)
            for k in range(0, taps):  # taps in index order, each product rounded, then the sum
                out += tl.load(taps_ptr + k) * tl.load(sal + rows * W + _reflect(cols + (k - half), W), mask=ok)
            tl.store(norm + rows * W + cols, out, mask=ok)
    tl.debug_barrier()
    total = tl.zeros([BH, BW], dtype=ACC)
    for h0 in range(0, H, BH):
        rows = (h0 + tl.arange(0, BH))[:, None]
        for w0 in range(0, W, BW):
            cols = (w0 + tl.arange(0, BW))[None, :]
            ok = (rows < H) & (cols < W)
            out = tl.zeros([BH, BW], dtype=ACC)
            for k in range(0, taps):
                out += tl.load(taps_ptr + k) * tl.load(norm + _reflect(rows + (k - half), H) * W + cols, mask=ok)
            tl.store(sal + rows * W + cols, out, mask=ok)
            total += tl.where(ok, out, 0.0)
    total_sum = tl.sum(tl.sum(total, axis=1), axis=0)
    usable = (total_sum > 0) & (total_sum < float("inf"))  # False for 0, inf and NaN
    denom = tl.where(usable, total_sum, (H * W).to(ACC))
    tl.debug_barrier()
    for h0 in range(0, H, BH):
        rows = (h0 + tl.arange(0, BH))[:, None]
        for w0 in range(0, W, BW):
            cols = (w0 + tl.arange(0, BW))[None, :]
            ok = (rows < H) & (cols < W)
            s = tl.load(sal + rows * W + cols, mask=ok, other=1.0)
            tl.store(norm + rows * W + cols, div_rn(tl.where(usable, s, 1.0), denom, ACC), mask=ok)


@triton.jit(do_not_specialize=["H", "W", "K", "n_kblocks", "s_ok", "s_oj"])
def sage_search_kernel(
    norm_ptr,
    perm_ptr,
    lam_ptr,
    off_ptr,
    score_ptr,
    H,
    W,
    K,
    n_kblocks,
    s_ok,
    s_oj,
    KB: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
    ACC: tl.constexpr,
):
    """score[b, k] = sum_p a M + c_k (1 - M), M = a / max(a + c_k, 1e-16), c_k(p) = c(p + d_k), 0 outside."""
    pid = tl.program_id(0)
    kblock = pid % n_kblocks
    b = (pid // n_kblocks).to(tl.int64)
    partner = tl.load(perm_ptr + b).to(tl.int64)
    lam_a, lam_c = _scales(lam_ptr, b, ACC)
    ks = kblock * KB + tl.arange(0, KB)
    k_ok = ks < K
    dy = tl.load(off_ptr + ks * s_ok, mask=k_ok, other=0).to(tl.int32)[:, None, None]
    dx = tl.load(off_ptr + ks * s_ok + s_oj, mask=k_ok, other=0).to(tl.int32)[:, None, None]
    hw = H * W
    own = norm_ptr + b * hw
    other = norm_ptr + partner * hw
    acc = tl.zeros([KB, BH, BW], dtype=ACC)
    for h0 in range(0, H, BH):
        rows = (h0 + tl.arange(0, BH))[None, :, None]
        for w0 in range(0, W, BW):
            cols = (w0 + tl.arange(0, BW))[None, None, :]
            ok = (rows < H) & (cols < W)
            a = lam_a * tl.load(own + rows * W + cols, mask=ok, other=0.0)  # once for the KB candidates
            qh = rows + dy
            qw = cols + dx
            inside = ok & k_ok[:, None, None] & (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
            c = lam_c * tl.load(other + qh * W + qw, mask=inside, other=0.0)
            m = _mask_value(a, c, ACC)  # pixels off the image: a = c = 0, M = 0, a term of 0
            acc += a * m + c * (1 - m)
    tl.store(score_ptr + b * K + ks, tl.sum(tl.sum(acc, axis=2), axis=1), mask=k_ok)


@triton.jit(do_not_specialize=["W", "K", "s_ok", "s_oj", "n_tile_programs"])
def sage_blend_kernel(
    x_ptr,
    out_ptr,
    norm_ptr,
    score_ptr,
    perm_ptr,
    lam_ptr,
    off_ptr,
    weight_ptr,
    lam_eff_ptr,
    shift_ptr,
    sx_b,
    sx_c,
    sx_h,
    sx_w,
    so_b,
    so_c,
    so_h,
    so_w,
    W,
    K,
    s_ok,
    s_oj,
    n_tile_programs,
    C: tl.constexpr,
    H: tl.constexpr,
    ROW_COUNT: tl.constexpr,
    ROW_LEN: tl.constexpr,
    LAYOUT: tl.constexpr,
    WIDE: tl.constexpr,
    ROWS: tl.constexpr,
    NV: tl.constexpr,
    VEC: tl.constexpr,
    ARGMAX_BLOCK: tl.constexpr,
    PIXEL_BLOCK: tl.constexpr,
    ACC: tl.constexpr,
    CD: tl.constexpr,
):
    """mixed[b] = M x[b] + (1 - M) x[perm b](p + d*) (0 outside), M and d* worked out per program; the last
    B programs write weight[b] = M, lam_eff[b] = mean M and shift[b] = d*."""
    pid = tl.program_id(0)
    if pid < n_tile_programs:
        b, rows, cols, ok, c, h, w, _ = _tile(C, H, ROW_COUNT, ROW_LEN, LAYOUT, ROWS, NV, VEC)
        partner = tl.load(perm_ptr + b).to(tl.int64)
        lam_a, lam_c = _scales(lam_ptr, b, ACC)
        best = _first_argmax(score_ptr + b * K, K, ARGMAX_BLOCK)
        dy = tl.load(off_ptr + best * s_ok).to(tl.int32)
        dx = tl.load(off_ptr + best * s_ok + s_oj).to(tl.int32)
        m = _weight_at(norm_ptr, b, partner, h, w, dy, dx, H, W, lam_a, lam_c, ok, ACC).to(CD)
        src = _offsets(rows, cols, c, h, w, sx_c, sx_h, sx_w, ROW_LEN, LAYOUT, WIDE)
        dst = _offsets(rows, cols, c, h, w, so_c, so_h, so_w, ROW_LEN, LAYOUT, WIDE)
        qh = h + dy
        qw = w + dx
        inside = ok & (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
        if WIDE:
            shifted = c.to(tl.int64) * sx_c + qh.to(tl.int64) * sx_h + qw.to(tl.int64) * sx_w
        else:
            shifted = c * sx_c + qh * sx_h + qw * sx_w
        own = tl.load(x_ptr + b * sx_b + src, mask=ok, other=0.0).to(CD)
        moved = tl.load(x_ptr + partner * sx_b + shifted, mask=inside, other=0.0).to(CD)
        tl.store(out_ptr + b * so_b + dst, (m * own + (1 - m) * moved).to(out_ptr.dtype.element_ty), mask=ok)
    else:
        b = (pid - n_tile_programs).to(tl.int64)
        partner = tl.load(perm_ptr + b).to(tl.int64)
        lam_a, lam_c = _scales(lam_ptr, b, ACC)
        best = _first_argmax(score_ptr + b * K, K, ARGMAX_BLOCK)
        dy = tl.load(off_ptr + best * s_ok).to(tl.int32)  # |dy| < H: int32 as in the tile branch
        dx = tl.load(off_ptr + best * s_ok + s_oj).to(tl.int32)
        tl.store(shift_ptr + 2 * b, dy.to(tl.int64))
        tl.store(shift_ptr + 2 * b + 1, dx.to(tl.int64))
        hw = H * W
        total = tl.zeros([PIXEL_BLOCK], dtype=ACC)
        for p0 in range(0, hw, PIXEL_BLOCK):
            p = p0 + tl.arange(0, PIXEL_BLOCK)
            ok = p < hw
            m = _weight_at(norm_ptr, b, partner, p // W, p % W, dy, dx, H, W, lam_a, lam_c, ok, ACC)
            tl.store(weight_ptr + b * hw + p, m, mask=ok)
            total += m  # M = 0 off the image
        lam_eff = div_rn(tl.sum(total, axis=0), tl.full([], hw, ACC), ACC)
        tl.store(lam_eff_ptr + b, lam_eff.to(tl.float32))


@triton.jit
def _inverse(perm_ptr, j, B, BLOCK: tl.constexpr):
    """The i with perm[i] == j (B if there is none)."""
    found = tl.full([], 0, tl.int64) + B
    for i0 in range(0, B, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        v = tl.load(perm_ptr + i, mask=i < B, other=-1).to(tl.int64)
        found = tl.minimum(found, tl.min(tl.where(v == j, i.to(tl.int64), B), axis=0))
    return found


@triton.jit(do_not_specialize=["W", "B"])
def sage_backward_kernel(
    go_ptr,
    gx_ptr,
    weight_ptr,
    perm_ptr,
    shift_ptr,
    sg_b,
    sg_c,
    sg_h,
    sg_w,
    so_b,
    so_c,
    so_h,
    so_w,
    W,
    B,
    C: tl.constexpr,
    H: tl.constexpr,
    ROW_COUNT: tl.constexpr,
    ROW_LEN: tl.constexpr,
    LAYOUT: tl.constexpr,
    WIDE: tl.constexpr,
    ROWS: tl.constexpr,
    NV: tl.constexpr,
    VEC: tl.constexpr,
    PERM_BLOCK: tl.constexpr,
    CD: tl.constexpr,
):
    """grad_x[j](p) = M_j(p) g_j(p) + (1 - M_i(q)) g_i(q), q = p - d*_i inside, where perm[i] == j."""
    j, rows, cols, ok, c, h, w, _ = _tile(C, H, ROW_COUNT, ROW_LEN, LAYOUT, ROWS, NV, VEC)
    i = _inverse(perm_ptr, j, B, PERM_BLOCK)
    has_source = i < B
    i_safe = tl.where(has_source, i, 0)
    # without a source (perm not a permutation) a shift by H puts every q above the image: no partner term
    dy = tl.where(has_source, tl.load(shift_ptr + 2 * i_safe).to(tl.int32), H)
    dx = tl.load(shift_ptr + 2 * i_safe + 1).to(tl.int32)
    hw = H * W
    src = _offsets(rows, cols, c, h, w, sg_c, sg_h, sg_w, ROW_LEN, LAYOUT, WIDE)
    dst = _offsets(rows, cols, c, h, w, so_c, so_h, so_w, ROW_LEN, LAYOUT, WIDE)
    m_own = tl.load(weight_ptr + j * hw + h * W + w, mask=ok, other=0.0).to(CD)
    g_own = tl.load(go_ptr + j * sg_b + src, mask=ok, other=0.0).to(CD)
    qh = h - dy
    qw = w - dx
    inside = ok & (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
    if WIDE:
        shifted = c.to(tl.int64) * sg_c + qh.to(tl.int64) * sg_h + qw.to(tl.int64) * sg_w
    else:
        shifted = c * sg_c + qh * sg_h + qw * sg_w
    m_via = tl.load(weight_ptr + i_safe * hw + qh * W + qw, mask=inside, other=0.0).to(CD)
    g_via = tl.load(go_ptr + i_safe * sg_b + shifted, mask=inside, other=0.0).to(CD)
    grad = m_own * g_own + tl.where(inside, (1 - m_via) * g_via, 0.0)
    tl.store(gx_ptr + j * so_b + dst, grad.to(gx_ptr.dtype.element_ty), mask=ok)


def _check_map_size(H: int, W: int) -> None:
    if H * W > INT32_MAX:
        raise ValueError(f"sage's Triton kernels index (H, W) maps in 32 bits: H * W must be < 2**31, got {H}x{W}")


def plan_saliency(grad: Tensor, sal: Tensor) -> Launch:
    """mean_c |grad| into ``sal`` (B, H, W) of the accumulate dtype, over (sample, pixel block) programs."""
    B, C, H, W = grad.shape
    n_blocks = triton.cdiv(H * W, _SALIENCY_BLOCK)
    return Launch(
        sage_saliency_kernel,
        (B * n_blocks,),
        (grad, sal, *grad.stride(), H, W, n_blocks),
        {"C": C, "BLOCK": _SALIENCY_BLOCK, "WIDE": needs_wide_offsets([grad]), "ACC": TL_DTYPE[sal.dtype]},
    )


def plan_blur(sal: Tensor, taps: Tensor, norm: Tensor) -> Launch:
    """The blurred, normalised saliency ``norm`` (B, H, W) from ``sal``; one program per sample."""
    B, H, W = sal.shape
    bw = min(triton.next_power_of_2(W), _BLUR_MAX_COLUMNS)
    bh = min(triton.next_power_of_2(H), max(1, _BLUR_TILE // bw))
    return Launch(
        sage_blur_kernel,
        (B,),
        (sal, taps, norm, H, W, taps.numel()),
        {"BH": bh, "BW": bw, "ACC": TL_DTYPE[norm.dtype]},
        {**COMPILE_OPTIONS, "num_warps": _BLUR_WARPS},
    )


def _search_tile(H: int, W: int) -> dict[str, int]:
    bw = min(triton.next_power_of_2(W), _SEARCH_MAX_COLUMNS)
    bh = min(triton.next_power_of_2(H), max(1, _SEARCH_PIXELS // bw))
    return {"KB": max(1, min(_MAX_CANDIDATES_PER_PROGRAM, _SEARCH_TILE // (bh * bw))), "BH": bh, "BW": bw}


def plan_search(norm: Tensor, perm: Tensor, lam: Tensor, offsets: Tensor, scores: Tensor) -> Launch:
    """The (B, K) ``scores`` of the candidate ``offsets``; ``perm`` and ``lam`` read at unit stride."""
    B, H, W = norm.shape
    K = offsets.shape[0]
    tile = _search_tile(H, W)
    n_kblocks = triton.cdiv(K, tile["KB"])
    return Launch(
        sage_search_kernel,
        (B * n_kblocks,),
        (norm, perm, lam, offsets, scores, H, W, K, n_kblocks, *offsets.stride()),
        {**tile, "ACC": TL_DTYPE[scores.dtype]},
    )


def plan_blend(
    x: Tensor, mixed: Tensor, norm: Tensor, scores: Tensor, perm: Tensor, lam: Tensor, offsets: Tensor,
    weight: Tensor, lam_eff: Tensor, shift: Tensor,
) -> Launch:  # fmt: skip
    """The blend launch writing ``mixed``, ``weight``, ``lam_eff`` and ``shift``."""
    B, _, _, W = x.shape
    layout = layout_of(x, mixed)
    programs, tile = _tiling(x, layout)
    return Launch(
        sage_blend_kernel,
        (B * programs + B,),
        (x, mixed, norm, scores, perm, lam, offsets, weight, lam_eff, shift, *x.stride(), *mixed.stride(), W,
         offsets.shape[0], *offsets.stride(), B * programs),
        {**tile, "LAYOUT": layout, "WIDE": needs_wide_offsets([x, mixed]), "ARGMAX_BLOCK": _ARGMAX_BLOCK,
         "PIXEL_BLOCK": _PIXEL_BLOCK, "ACC": TL_DTYPE[weight.dtype], "CD": TL_DTYPE[accumulate_dtype(x.dtype)]},
    )  # fmt: skip


def plan_backward(grad_out: Tensor, grad_x: Tensor, weight: Tensor, perm: Tensor, shift: Tensor) -> Launch:
    """The backward launch writing ``grad_x``."""
    B = grad_out.shape[0]
    layout = layout_of(grad_out, grad_x)
    programs, tile = _tiling(grad_out, layout)
    return Launch(
        sage_backward_kernel,
        (B * programs,),
        (grad_out, grad_x, weight, perm, shift, *grad_out.stride(), *grad_x.stride(), grad_out.shape[3], B),
        {**tile, "LAYOUT": layout, "WIDE": needs_wide_offsets([grad_out, grad_x]), "PERM_BLOCK": _PERM_BLOCK,
         "CD": TL_DTYPE[accumulate_dtype(grad_out.dtype)]},
    )  # fmt: skip


@functools.lru_cache(maxsize=64)
def _blur_taps(kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The reference's blur weights on ``device``, copied there once per (size, sigma, dtype, device)."""
    return blur_weights(kernel_size, sigma, dtype).to(device)


def _as_offsets(offsets: Tensor) -> Tensor:
    """(K, 2) shifts read at their own strides: int32/int64 kept, other integers widened."""
    return offsets if offsets.dtype in (torch.int32, torch.int64) else offsets.to(torch.int64)


def _like(t: Tensor) -> Tensor:
    """An output in the reference's memory format: channels_last for a channels_last input, else contiguous."""
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last)
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def sage_forward(
    x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, offsets: Tensor, sigma: float, kernel_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mixed like x, lam_eff (B,) float32, shift (B, 2) int64, weight (B, H, W) in grad's accumulate dtype).
    Four launches; inputs assumed validated by ``rmix_fast.sage``."""
    B, _, H, W = x.shape
    _check_map_size(H, W)
    acc = accumulate_dtype(grad.dtype)
    device = x.device
    perm = as_index(perm)
    lam = as_levels(lam.expand(B))
    offsets = _as_offsets(offsets)
    with device_guard(x):
        sal = torch.empty((B, H, W), dtype=acc, device=device)
        norm = torch.empty_like(sal)
        scores = torch.empty((B, offsets.shape[0]), dtype=acc, device=device)
        mixed = _like(x)
        weight = torch.empty_like(sal)
        lam_eff = torch.empty(B, dtype=torch.float32, device=device)
        shift = torch.empty((B, 2), dtype=torch.int64, device=device)
        plan_saliency(grad, sal)()
        plan_blur(sal, _blur_taps(kernel_size, float(sigma), acc, device), norm)()
        plan_search(norm, perm, lam, offsets, scores)()
        plan_blend(x, mixed, norm, scores, perm, lam, offsets, weight, lam_eff, shift)()
    return mixed, lam_eff, shift, weight


def sage_backward(grad_out: Tensor, weight: Tensor, perm: Tensor, shift: Tensor) -> Tensor:
    """Gradient w.r.t. x of ``sage_forward``'s ``mixed``: one launch (the inverse permutation is found in it)."""
    _check_map_size(*grad_out.shape[2:])
    shift = shift if shift.dtype in (torch.int32, torch.int64) else shift.to(torch.int64)
    with device_guard(grad_out):
        grad_x = _like(grad_out)
        plan_backward(grad_out, grad_x, weight.contiguous(), as_index(perm), shift.contiguous())()
    return grad_x
