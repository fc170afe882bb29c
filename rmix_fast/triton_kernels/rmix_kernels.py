"""Triton kernels for R-Mix. Three launches per forward, one per backward, no float atomics.

1. ``cell_saliency_partial_kernel``: grid (B, p, splits). Each program reads a band of rows of one
   cell row of ``grad`` once and writes per-cell partial sums of sqrt(mean_c g^2).
2. ``cell_threshold_kernel``: grid (B,). Sums the partials in a fixed order (deterministic), finds
   the two order statistics around the q-quantile by rank counting (no sort), interpolates exactly
   as ``torch.quantile`` and writes the int8 "top" mask.
3. ``blend_kernel``: grid (blocks, B). Mixes x[b] with x[perm[b]] cell by cell; a source is only
   read where it is used. Program 0 of each sample also writes lam_eff. The same kernel (and
   ``blend_backward_kernel``) serves R-Mix, whose cell modes follow from the two top masks
   (``FROM_MASK``), and the region blend behind Mixup and CutMix, which reads the modes from a
   (B, gh, gw) code map (0 blend, 1 own, else partner) on a grid that need not be square.

Element addressing (``LAYOUT``): when x and the output are both dense NCHW or both dense NHWC, a
sample is walked in memory order (fully contiguous, vectorisable); otherwise through strides.
"""

from __future__ import annotations

import triton
import triton.language as tl

LAYOUT_NCHW = 0
LAYOUT_NHWC = 1
LAYOUT_STRIDED = 2


@triton.jit
def _div(a, b, ACC: tl.constexpr):
    """Correctly rounded a / b, as torch computes it (float32 division is approximate by default)."""
    if ACC == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def _sqrt(a, ACC: tl.constexpr):
    """Correctly rounded sqrt, as torch computes it."""
    if ACC == tl.float64:
        return tl.sqrt(a)
    else:
        return tl.sqrt_rn(a)


@triton.jit
def cell_saliency_partial_kernel(
    grad_ptr,
    part_ptr,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    C: tl.constexpr,
    W: tl.constexpr,
    P: tl.constexpr,
    CELL_H: tl.constexpr,
    CELL_W: tl.constexpr,
    ROWS_PER_PROG: tl.constexpr,
    N_SPLIT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ACC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    cell_row = tl.program_id(1)
    split = tl.program_id(2)
    row_start = cell_row * CELL_H + split * ROWS_PER_PROG
    row_end = tl.minimum(row_start + ROWS_PER_PROG, (cell_row + 1) * CELL_H)
    base = grad_ptr + b * stride_b
    cell_ids = tl.arange(0, BLOCK_P)
    cells = tl.zeros([BLOCK_P], dtype=ACC)
    for w0 in range(0, W, BLOCK_W):
        cols = w0 + tl.arange(0, BLOCK_W)
        col_ok = cols < W
        col_sum = tl.zeros([BLOCK_W], dtype=ACC)
        for r0 in range(0, ROWS_PER_PROG, BLOCK_R):  # integer bounds: the band's last rows are masked
            rows = row_start + r0 + tl.arange(0, BLOCK_R)
            ok = (rows < row_end)[:, None] & col_ok[None, :]
            offs = rows[:, None].to(tl.int64) * stride_h + cols[None, :].to(tl.int64) * stride_w
            sq = tl.zeros([BLOCK_R, BLOCK_W], dtype=ACC)
            for c in range(C):
                g = tl.load(base + c * stride_c + offs, mask=ok, other=0.0).to(ACC)
                sq += g * g
            # masked-out entries are sqrt(0) = 0 and add nothing
            col_sum += tl.sum(_sqrt(_div(sq, tl.full(sq.shape, C, ACC), ACC), ACC), axis=0)
        in_cell = ((cols // CELL_W)[:, None] == cell_ids[None, :]) & col_ok[:, None]
        cells += tl.sum(tl.where(in_cell, col_sum[:, None], 0.0), axis=0)
    out = part_ptr + ((b * P + cell_row) * N_SPLIT + split) * P
    tl.store(out + cell_ids, cells, mask=cell_ids < P)


@triton.jit
def cell_threshold_kernel(
    part_ptr,
    q_ptr,
    sal_ptr,
    mask_ptr,
    P: tl.constexpr,
    N_SPLIT: tl.constexpr,
    CELL_AREA: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_J: tl.constexpr,
    ACC: tl.constexpr,
):
    N: tl.constexpr = P * P
    b = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, BLOCK_N)
    valid = idx < N
    cell_row = idx // P
    cell_col = idx % P
    base = part_ptr + b * (P * N_SPLIT * P)
    total = tl.zeros([BLOCK_N], dtype=ACC)
    for s in range(N_SPLIT):  # fixed order: deterministic
        total += tl.load(base + (cell_row * N_SPLIT + s) * P + cell_col, mask=valid, other=0.0)
    sal = _div(total, tl.full(total.shape, CELL_AREA, ACC), ACC)
    elem_finite = tl.abs(sal) < float("inf")  # False for inf and NaN
    all_finite = tl.sum((valid & ~elem_finite).to(tl.int32), axis=0) == 0
    vals = tl.where(valid, tl.where(elem_finite, sal, 0.0), float("inf"))
    tl.store(sal_ptr + b * N + idx, vals, mask=valid)
    tl.debug_barrier()  # the chunks below read values other threads stored
    # Order statistics by counting, not sorting: the k-th smallest value v satisfies
    # #{< v} <= k < #{<= v}. Exact, and O(N^2 / BLOCK_J) cheap compare-and-sum steps.
    n_less = tl.zeros([BLOCK_N], dtype=tl.int32)
    n_less_eq = tl.zeros([BLOCK_N], dtype=tl.int32)
    for j0 in range(0, N, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        other = tl.load(sal_ptr + b * N + j, mask=j < N, other=float("inf"))
        n_less += tl.sum((other[None, :] < vals[:, None]).to(tl.int32), axis=1)
        n_less_eq += tl.sum((other[None, :] <= vals[:, None]).to(tl.int32), axis=1)
    # torch.quantile, linear: rank = q*(n-1); lerp(v[floor], v[ceil], rank - floor) as torch.lerp does
    rank = tl.load(q_ptr + b).to(ACC) * (N - 1)
    below = tl.floor(rank)
    weight = rank - below
    k_lo = below.to(tl.int32)
    k_hi = tl.ceil(rank).to(tl.int32)
    lo = tl.max(tl.where(valid & (n_less <= k_lo) & (k_lo < n_less_eq), vals, -float("inf")), axis=0)
    hi = tl.max(tl.where(valid & (n_less <= k_hi) & (k_hi < n_less_eq), vals, -float("inf")), axis=0)
    t = tl.where(weight < 0.5, lo + weight * (hi - lo), hi - (hi - lo) * (1 - weight))
    top = (vals >= t) | (all_finite == 0)
    tl.store(mask_ptr + b * N + idx, top.to(tl.int8), mask=valid)


@triton.jit
def _locate(idx, s_c, s_h, s_w, d_c, d_h, d_w, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, LAYOUT: tl.constexpr):
    """Flat per-sample element index -> (source offset, destination offset, pixel h*W+w)."""
    if LAYOUT == 0:  # dense NCHW on both sides: memory order is logical order
        pix = idx % (H * W)
        src = idx
        dst = idx
    elif LAYOUT == 1:  # dense NHWC on both sides
        pix = idx // C
        src = idx
        dst = idx
    else:
        c = idx // (H * W)
        pix = idx % (H * W)
        h = pix // W
        w = pix % W
        src = c * s_c + h * s_h + w * s_w
        dst = c * d_c + h * d_h + w * d_w
    return src, dst, pix


@triton.jit
def _lerp(start, end, weight):
    """torch.lerp's formula: exact at weight 0 and 1, and when start == end."""
    diff = end - start
    return tl.where(weight < 0.5, start + weight * diff, end - diff * (1 - weight))


@triton.jit
def _cell_of(pix, W: tl.constexpr, GW: tl.constexpr, CELL_H: tl.constexpr, CELL_W: tl.constexpr):
    return (pix // W // CELL_H) * GW + (pix % W) // CELL_W


@triton.jit
def _cell_modes(code_ptr, b, partner, cell, ok, N: tl.constexpr, FROM_MASK: tl.constexpr):
    """(blend, own) flags of the cells ``cell`` of mixed[b]; where neither is set, b takes its partner's pixels.

    FROM_MASK: ``code_ptr`` is R-Mix's (B, N) top mask and a cell's mode follows from b's and its partner's
    flags. Otherwise it is a (B, N) region code map: 0 blend, 1 own, anything else partner.
    """
    if FROM_MASK:
        top = tl.load(code_ptr + b * N + cell, mask=ok, other=0) != 0
        top_partner = tl.load(code_ptr + partner * N + cell, mask=ok, other=0) != 0
        blend = top == top_partner
        own = top & (top != top_partner)
    else:
        code = tl.load(code_ptr + b * N + cell, mask=ok, other=0)
        blend = code == 0
        own = code == 1
    return blend, own


@triton.jit
def blend_kernel(
    x_ptr,
    out_ptr,
    code_ptr,
    perm_ptr,
    lam_ptr,
    lam_eff_ptr,
    sx_b,
    sx_c,
    sx_h,
    sx_w,
    so_b,
    so_c,
    so_h,
    so_w,
    C: tl.constexpr,
    H: tl.constexpr,
    W: tl.constexpr,
    GH: tl.constexpr,
    GW: tl.constexpr,
    LAYOUT: tl.constexpr,
    FROM_MASK: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CD: tl.constexpr,
):
    """mixed[b] cell by cell: blend lerp(x[perm[b]], x[b], lam[b]), keep x[b] or take x[perm[b]]; the first
    program of each sample also writes lam_eff[b] = (blended cells * lam + own cells) / cells."""
    N: tl.constexpr = GH * GW
    blk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    partner = tl.load(perm_ptr + b).to(tl.int64)
    lam = tl.load(lam_ptr + b).to(CD)
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    ok = idx < C * H * W
    src, dst, pix = _locate(idx, sx_c, sx_h, sx_w, so_c, so_h, so_w, C, H, W, LAYOUT)
    cell = _cell_of(pix, W, GW, H // GH, W // GW)
    blend, own = _cell_modes(code_ptr, b, partner, cell, ok, N, FROM_MASK)
    # read each source only where it contributes
    xa = tl.load(x_ptr + b * sx_b + src, mask=ok & (blend | own), other=0.0).to(CD)
    xb = tl.load(x_ptr + partner * sx_b + src, mask=ok & (own == 0), other=0.0).to(CD)
    mixed = tl.where(blend, _lerp(xb, xa, lam), tl.where(own, xa, xb))
    tl.store(out_ptr + b * so_b + dst, mixed.to(out_ptr.dtype.element_ty), mask=ok)
    if blk == 0:
        blend_cells = tl.zeros((BLOCK_N,), dtype=tl.int32)
        own_cells = tl.zeros((BLOCK_N,), dtype=tl.int32)
        for start in range(0, N, BLOCK_N):  # pixel-exact region maps can hold many cells
            n = start + tl.arange(0, BLOCK_N)
            nv = n < N
            cb, co = _cell_modes(code_ptr, b, partner, n, nv, N, FROM_MASK)
            blend_cells += (nv & cb).to(tl.int32)
            own_cells += (nv & co).to(tl.int32)
        n_blend = tl.sum(blend_cells, axis=0).to(tl.float64)
        n_own = tl.sum(own_cells, axis=0).to(tl.float64)
        lam64 = tl.load(lam_ptr + b).to(tl.float64)
        tl.store(lam_eff_ptr + b, ((n_blend * lam64 + n_own) / N).to(tl.float32))


@triton.jit
def blend_backward_kernel(
    go_ptr,
    gx_ptr,
    code_ptr,
    perm_ptr,
    src_ptr,
    lam_ptr,
    sg_b,
    sg_c,
    sg_h,
    sg_w,
    so_b,
    so_c,
    so_h,
    so_w,
    C: tl.constexpr,
    H: tl.constexpr,
    W: tl.constexpr,
    GH: tl.constexpr,
    GW: tl.constexpr,
    LAYOUT: tl.constexpr,
    FROM_MASK: tl.constexpr,
    BLOCK: tl.constexpr,
    CD: tl.constexpr,
):
    """grad_x[b] = own share of grad_out[b] + partner share of grad_out[s], where perm[s] == b."""
    N: tl.constexpr = GH * GW
    blk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    partner = tl.load(perm_ptr + b).to(tl.int64)
    s = tl.load(src_ptr + b).to(tl.int64)
    lam_b = tl.load(lam_ptr + b).to(CD)
    lam_s = tl.load(lam_ptr + s).to(CD)
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    ok = idx < C * H * W
    src, dst, pix = _locate(idx, sg_c, sg_h, sg_w, so_c, so_h, so_w, C, H, W, LAYOUT)
    cell = _cell_of(pix, W, GW, H // GH, W // GW)
    blend, own = _cell_modes(code_ptr, b, partner, cell, ok, N, FROM_MASK)
    blend_s, own_s = _cell_modes(code_ptr, s, b, cell, ok, N, FROM_MASK)  # how mixed[s] used x[b]
    g_own = tl.load(go_ptr + b * sg_b + src, mask=ok & (blend | own), other=0.0).to(CD)
    g_via = tl.load(go_ptr + s * sg_b + src, mask=ok & (own_s == 0), other=0.0).to(CD)
    own_term = tl.where(blend, lam_b * g_own, tl.where(own, g_own, 0.0))
    via_term = tl.where(blend_s, (1 - lam_s) * g_via, tl.where(own_s, 0.0, g_via))
    tl.store(gx_ptr + b * so_b + dst, (own_term + via_term).to(gx_ptr.dtype.element_ty), mask=ok)
