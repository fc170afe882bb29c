"""Triton kernels and launchers of the blend engine: one launch forward, one backward, no float atomics.

``blend_kernel``: grid (blocks, B). Mixes x[b] with x[perm[b]] cell by cell; a source is only read where
it is used. Program 0 of each sample also writes lam_eff. A cell's mode comes either from a (B, gh, gw)
region code map (0 blend, 1 own, else partner; any grid, need not be square) or, for R-Mix
(``FROM_MASK``), from the two samples' top masks, so R-Mix needs no code map in memory.
``blend_backward_kernel`` is its gradient w.r.t. x.

Element addressing (``LAYOUT``): when x and the output are both dense NCHW or both dense NHWC, a sample is
walked in memory order (fully contiguous, vectorisable); otherwise through strides. Inputs are assumed
validated by ``rmix_fast.blend_regions``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops._triton._launch import TL_DTYPE, device_guard, index_tensor, layout_of

_BLOCK = 1024
_COUNT_BLOCK = 4096  # cells counted per step for lam_eff


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


def launch_blend(x: Tensor, codes: Tensor, perm: Tensor, lam: Tensor, gh: int, gw: int, from_mask: bool):
    """One blend launch: (mixed, lam_eff). ``codes`` is a (B, gh, gw) region code map, or R-Mix's
    (B, p*p) int8 top mask with ``from_mask``."""
    B, C, H, W = x.shape
    mixed = torch.empty_like(x)  # preserves x's memory format
    lam_eff = torch.empty(B, dtype=torch.float32, device=x.device)
    blend_kernel[(triton.cdiv(C * H * W, _BLOCK), B)](
        x, mixed, codes, perm, lam, lam_eff, *x.stride(), *mixed.stride(),
        C=C, H=H, W=W, GH=gh, GW=gw, LAYOUT=layout_of(x, mixed), FROM_MASK=from_mask,
        BLOCK=_BLOCK, BLOCK_N=min(max(2, triton.next_power_of_2(gh * gw)), _COUNT_BLOCK),
        CD=TL_DTYPE[accumulate_dtype(x.dtype)],
    )  # fmt: skip
    return mixed, lam_eff


def launch_blend_backward(
    grad_out: Tensor, codes: Tensor, perm: Tensor, lam: Tensor, gh: int, gw: int, from_mask: bool
) -> Tensor:
    B, C, H, W = grad_out.shape
    src = torch.argsort(perm)  # src[b]: the sample that takes b as its partner
    grad_x = torch.empty_like(grad_out)
    blend_backward_kernel[(triton.cdiv(C * H * W, _BLOCK), B)](
        grad_out, grad_x, codes, perm, src, lam, *grad_out.stride(), *grad_x.stride(),
        C=C, H=H, W=W, GH=gh, GW=gw, LAYOUT=layout_of(grad_out, grad_x), FROM_MASK=from_mask,
        BLOCK=_BLOCK, CD=TL_DTYPE[accumulate_dtype(grad_out.dtype)],
    )  # fmt: skip
    return grad_x


def blend_regions_forward(x: Tensor, regions: Tensor, perm: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(mixed, lam_eff) of the region blend. One launch; ``regions`` of any integer dtype is read as is."""
    gh, gw = regions.shape[1:]
    with device_guard(x):
        return launch_blend(x, regions.contiguous(), index_tensor(perm), lam, gh, gw, from_mask=False)


def blend_regions_backward(grad_out: Tensor, regions: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient w.r.t. x of ``blend_regions_forward``'s ``mixed``. One launch plus the inverse permutation."""
    gh, gw = regions.shape[1:]
    with device_guard(grad_out):
        return launch_blend_backward(grad_out, regions.contiguous(), index_tensor(perm), lam, gh, gw, from_mask=False)
