"""Triton kernels and launchers of the blend engine: one launch forward, one backward, no float atomics.

``blend_kernel`` mixes x[b] with x[perm[b]] cell by cell; the first program of each sample also writes
lam_eff. A cell's mode comes either from a (B, gh, gw) region code map (0 blend, 1 own, else partner; any
grid, need not be square) or, for R-Mix (``FROM_MASK``), from the two samples' top masks, so R-Mix needs
no code map in memory. ``blend_backward_kernel`` is its gradient w.r.t. x.

How a program walks memory. A sample is seen as ``ROW_COUNT`` rows of ``ROW_LEN`` elements: the C*H
rows of W pixels of NCHW (also the logical order of a strided tensor), or the H rows of W*C interleaved
channels of NHWC. A program owns a (ROWS, NV, VEC) tile of one sample: ROWS rows, NV vectors of VEC
elements (16 bytes) each. The cell mode is worked out per element, but a source is loaded per whole
vector, read where any element of the vector uses it and skipped where none does: the loads keep a mask
that is uniform over each vector, so they compile to 128-bit loads, and a copied cell still reads one
image (only vectors that straddle a cell edge read both).

One compiled variant per (dtype, layout, image shape): the region grid and cell size are runtime
arguments the JIT does not specialise on, so CutMix's box-aligned grid, which changes from batch to
batch, never recompiles. The grid is 1-D over (sample, row block, column block), so B is limited only
by 2**31 programs. In-sample offsets are 32-bit unless a sample spans 2**31 elements (``WIDE``); the
sample's base offset is always 64-bit. Inputs are assumed validated by ``rmix_fast.blend_regions``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops._triton._launch import (
    LAYOUT_NHWC,
    TL_DTYPE,
    Launch,
    as_index,
    as_levels,
    device_guard,
    layout_of,
    needs_wide_offsets,
)

_TILE = 2048  # elements one program mixes
_COUNT_BLOCK = 1024  # cells counted per step for lam_eff
_VECTOR_BYTES = 16
_MAX_ROW_BLOCK = 1024
_RUNTIME_GRID = ["gh", "gw", "cell_h", "cell_w"]  # never specialised: one variant serves every grid


@triton.jit
def _coords(rows, cols, C: tl.constexpr, H: tl.constexpr, LAYOUT: tl.constexpr):
    """Rows and columns of a sample's row view -> (c, h, w)."""
    if LAYOUT == 1:  # NHWC: a row is an image row, its columns W*C interleaved channels
        c = cols % C
        h = rows
        w = cols // C
    else:
        c = rows // H
        h = rows % H
        w = cols
    return c, h, w


@triton.jit
def _offsets(rows, cols, c, h, w, s_c, s_h, s_w, ROW_LEN: tl.constexpr, LAYOUT: tl.constexpr, WIDE: tl.constexpr):
    """In-sample element offsets: memory order for the dense layouts, strides otherwise."""
    if LAYOUT == 2:
        if WIDE:
            off = c.to(tl.int64) * s_c + h.to(tl.int64) * s_h + w.to(tl.int64) * s_w
        else:
            off = c * s_c + h * s_h + w * s_w
    else:
        if WIDE:
            off = rows.to(tl.int64) * ROW_LEN + cols
        else:
            off = rows * ROW_LEN + cols
    return off


@triton.jit
def _lerp(start, end, weight):
    """torch.lerp's formula: exact at weight 0 and 1, and when start == end."""
    diff = end - start
    return tl.where(weight < 0.5, start + weight * diff, end - diff * (1 - weight))


@triton.jit
def _cell_modes(code_ptr, b, partner, cell, n_cells, ok, FROM_MASK: tl.constexpr):
    """(blend, own) flags of the cells ``cell`` of mixed[b]; where neither is set, b takes its partner's pixels.

    FROM_MASK: ``code_ptr`` is R-Mix's (B, n_cells) top mask and a cell's mode follows from b's and its
    partner's flags. Otherwise it is a (B, n_cells) region code map: 0 blend, 1 own, anything else partner.
    """
    if FROM_MASK:
        top = tl.load(code_ptr + b * n_cells + cell, mask=ok, other=0) != 0
        top_partner = tl.load(code_ptr + partner * n_cells + cell, mask=ok, other=0) != 0
        blend = top == top_partner
        own = top & (top != top_partner)
    else:
        code = tl.load(code_ptr + b * n_cells + cell, mask=ok, other=0)
        blend = code == 0
        own = code == 1
    return blend, own


@triton.jit
def _any_in_vector(flag):
    """(ROWS, NV, VEC) flags -> (ROWS, NV, 1): whether any element of each vector has it."""
    return tl.max(flag.to(tl.int32), axis=2, keep_dims=True) > 0


@triton.jit
def _tile(C: tl.constexpr, H: tl.constexpr, ROW_COUNT: tl.constexpr, ROW_LEN: tl.constexpr, LAYOUT: tl.constexpr,
          ROWS: tl.constexpr, NV: tl.constexpr, VEC: tl.constexpr):  # fmt: skip
    """This program's sample and tile: (b, rows, cols, ok, c, h, w, first) with ``ok`` (ROWS, NV, 1) true
    for whole vectors inside the sample, and ``first`` true for the sample's first program."""
    ROW_BLOCKS: tl.constexpr = (ROW_COUNT + ROWS - 1) // ROWS
    COL_BLOCKS: tl.constexpr = (ROW_LEN + NV * VEC - 1) // (NV * VEC)
    pid = tl.program_id(0)
    col_block = pid % COL_BLOCKS
    row_block = (pid // COL_BLOCKS) % ROW_BLOCKS
    b = (pid // (COL_BLOCKS * ROW_BLOCKS)).to(tl.int64)
    rows = (row_block * ROWS + tl.arange(0, ROWS))[:, None, None]
    vectors = ((col_block * NV + tl.arange(0, NV)) * VEC)[None, :, None]  # first column of each vector
    cols = vectors + tl.arange(0, VEC)[None, None, :]
    ok = (rows < ROW_COUNT) & (vectors < ROW_LEN)  # ROW_LEN is a multiple of VEC
    c, h, w = _coords(rows, cols, C, H, LAYOUT)
    return b, rows, cols, ok, c, h, w, (row_block == 0) & (col_block == 0)


@triton.jit(do_not_specialize=_RUNTIME_GRID)
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
    gh,
    gw,
    cell_h,
    cell_w,
    C: tl.constexpr,
    H: tl.constexpr,
    ROW_COUNT: tl.constexpr,
    ROW_LEN: tl.constexpr,
    LAYOUT: tl.constexpr,
    FROM_MASK: tl.constexpr,
    WIDE: tl.constexpr,
    ROWS: tl.constexpr,
    NV: tl.constexpr,
    VEC: tl.constexpr,
    COUNT_BLOCK: tl.constexpr,
    CD: tl.constexpr,
):
    """mixed[b] cell by cell: blend lerp(x[perm[b]], x[b], lam[b]), keep x[b] or take x[perm[b]]; the first
    program of each sample also writes lam_eff[b] = (blended cells * lam + own cells) / cells."""
    b, rows, cols, ok, c, h, w, first = _tile(C, H, ROW_COUNT, ROW_LEN, LAYOUT, ROWS, NV, VEC)
    partner = tl.load(perm_ptr + b).to(tl.int64)
    lam = tl.load(lam_ptr + b).to(CD)
    n_cells = gh * gw
    cell = (h // cell_h) * gw + w // cell_w
    blend, own = _cell_modes(code_ptr, b, partner, cell, n_cells, ok, FROM_MASK)
    src = _offsets(rows, cols, c, h, w, sx_c, sx_h, sx_w, ROW_LEN, LAYOUT, WIDE)
    dst = _offsets(rows, cols, c, h, w, so_c, so_h, so_w, ROW_LEN, LAYOUT, WIDE)
    # each source only in the vectors that use it
    xa = tl.load(x_ptr + b * sx_b + src, mask=ok & _any_in_vector(blend | own), other=0.0).to(CD)
    xb = tl.load(x_ptr + partner * sx_b + src, mask=ok & _any_in_vector(own == 0), other=0.0).to(CD)
    mixed = tl.where(blend, _lerp(xb, xa, lam), tl.where(own, xa, xb))
    tl.store(out_ptr + b * so_b + dst, mixed.to(out_ptr.dtype.element_ty), mask=ok)
    if first:
        blend_cells = tl.zeros((COUNT_BLOCK,), dtype=tl.int32)
        own_cells = tl.zeros((COUNT_BLOCK,), dtype=tl.int32)
        for start in range(0, n_cells, COUNT_BLOCK):  # pixel-exact region maps can hold many cells
            n = start + tl.arange(0, COUNT_BLOCK)
            valid = n < n_cells
            cell_blend, cell_own = _cell_modes(code_ptr, b, partner, n, n_cells, valid, FROM_MASK)
            blend_cells += (valid & cell_blend).to(tl.int32)
            own_cells += (valid & cell_own).to(tl.int32)
        n_blend = tl.sum(blend_cells, axis=0).to(tl.float64)
        n_own = tl.sum(own_cells, axis=0).to(tl.float64)
        lam64 = tl.load(lam_ptr + b).to(tl.float64)
        tl.store(lam_eff_ptr + b, ((n_blend * lam64 + n_own) / n_cells.to(tl.float64)).to(tl.float32))


@triton.jit(do_not_specialize=_RUNTIME_GRID)
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
    gh,
    gw,
    cell_h,
    cell_w,
    C: tl.constexpr,
    H: tl.constexpr,
    ROW_COUNT: tl.constexpr,
    ROW_LEN: tl.constexpr,
    LAYOUT: tl.constexpr,
    FROM_MASK: tl.constexpr,
    WIDE: tl.constexpr,
    ROWS: tl.constexpr,
    NV: tl.constexpr,
    VEC: tl.constexpr,
    CD: tl.constexpr,
):
    """grad_x[b] = own share of grad_out[b] + partner share of grad_out[s], where perm[s] == b."""
    b, rows, cols, ok, c, h, w, _ = _tile(C, H, ROW_COUNT, ROW_LEN, LAYOUT, ROWS, NV, VEC)
    partner = tl.load(perm_ptr + b).to(tl.int64)
    s = tl.load(src_ptr + b).to(tl.int64)
    lam_b = tl.load(lam_ptr + b).to(CD)
    lam_s = tl.load(lam_ptr + s).to(CD)
    n_cells = gh * gw
    cell = (h // cell_h) * gw + w // cell_w
    blend, own = _cell_modes(code_ptr, b, partner, cell, n_cells, ok, FROM_MASK)
    blend_s, own_s = _cell_modes(code_ptr, s, b, cell, n_cells, ok, FROM_MASK)  # how mixed[s] used x[b]
    src = _offsets(rows, cols, c, h, w, sg_c, sg_h, sg_w, ROW_LEN, LAYOUT, WIDE)
    dst = _offsets(rows, cols, c, h, w, so_c, so_h, so_w, ROW_LEN, LAYOUT, WIDE)
    g_own = tl.load(go_ptr + b * sg_b + src, mask=ok & _any_in_vector(blend | own), other=0.0).to(CD)
    g_via = tl.load(go_ptr + s * sg_b + src, mask=ok & _any_in_vector(own_s == 0), other=0.0).to(CD)
    own_term = tl.where(blend, lam_b * g_own, tl.where(own, g_own, 0.0))
    via_term = tl.where(blend_s, (1 - lam_s) * g_via, tl.where(own_s, 0.0, g_via))
    tl.store(gx_ptr + b * so_b + dst, (own_term + via_term).to(gx_ptr.dtype.element_ty), mask=ok)


def _tiling(t: Tensor, layout: int) -> tuple[int, dict[str, int]]:
    """Programs per sample and the tile constants of a (B, C, H, W) tensor walked in ``layout``."""
    _, C, H, W = t.shape
    row_count, row_len = (H, W * C) if layout == LAYOUT_NHWC else (C * H, W)
    vec = _VECTOR_BYTES // t.element_size()
    while row_len % vec:  # a vector never crosses a row: its mask stays uniform
        vec //= 2
    block = max(vec, min(triton.next_power_of_2(row_len), _MAX_ROW_BLOCK))
    rows = max(1, min(triton.next_power_of_2(row_count), _TILE // block))
    programs = triton.cdiv(row_count, rows) * triton.cdiv(row_len, block)
    return programs, {"C": C, "H": H, "ROW_COUNT": row_count, "ROW_LEN": row_len, "ROWS": rows,
                      "NV": block // vec, "VEC": vec}  # fmt: skip


def _grid_args(gh: int, gw: int, H: int, W: int) -> tuple[int, int, int, int]:
    """The runtime grid arguments: cells per column and row, and the cell size in pixels."""
    return gh, gw, H // gh, W // gw


def plan_blend(
    x: Tensor, mixed: Tensor, lam_eff: Tensor, codes: Tensor, perm: Tensor, lam: Tensor, gh: int, gw: int,
    from_mask: bool,
) -> Launch:  # fmt: skip
    """The forward launch writing ``mixed`` and ``lam_eff``. ``codes``: a (B, gh, gw) region code map, or
    R-Mix's (B, p*p) int8 top mask with ``from_mask``; ``perm`` and ``lam`` read at unit stride."""
    B, _, H, W = x.shape
    layout = layout_of(x, mixed)
    programs, tile = _tiling(x, layout)
    return Launch(
        blend_kernel,
        (B * programs,),
        (x, mixed, codes, perm, lam, lam_eff, *x.stride(), *mixed.stride(), *_grid_args(gh, gw, H, W)),
        {**tile, "LAYOUT": layout, "FROM_MASK": from_mask, "WIDE": needs_wide_offsets([x, mixed]),
         "COUNT_BLOCK": _COUNT_BLOCK, "CD": TL_DTYPE[accumulate_dtype(x.dtype)]},
    )  # fmt: skip


def plan_blend_backward(
    grad_out: Tensor, grad_x: Tensor, codes: Tensor, perm: Tensor, src: Tensor, lam: Tensor, gh: int, gw: int,
    from_mask: bool,
) -> Launch:  # fmt: skip
    """The backward launch writing ``grad_x``; ``src`` is the inverse permutation."""
    B, _, H, W = grad_out.shape
    layout = layout_of(grad_out, grad_x)
    programs, tile = _tiling(grad_out, layout)
    return Launch(
        blend_backward_kernel,
        (B * programs,),
        (grad_out, grad_x, codes, perm, src, lam, *grad_out.stride(), *grad_x.stride(),
         *_grid_args(gh, gw, H, W)),
        {**tile, "LAYOUT": layout, "FROM_MASK": from_mask, "WIDE": needs_wide_offsets([grad_out, grad_x]),
         "CD": TL_DTYPE[accumulate_dtype(grad_out.dtype)]},
    )  # fmt: skip


def launch_blend(
    x: Tensor, codes: Tensor, perm: Tensor, lam: Tensor, gh: int, gw: int, from_mask: bool
) -> tuple[Tensor, Tensor]:
    """One blend launch: (mixed, lam_eff)."""
    mixed = torch.empty_like(x)  # preserves x's memory format
    lam_eff = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    plan_blend(x, mixed, lam_eff, codes, as_index(perm), as_levels(lam), gh, gw, from_mask)()
    return mixed, lam_eff


def launch_blend_backward(
    grad_out: Tensor, codes: Tensor, perm: Tensor, lam: Tensor, gh: int, gw: int, from_mask: bool
) -> Tensor:
    perm = as_index(perm)
    src = torch.argsort(perm)  # src[b]: the sample that takes b as its partner
    grad_x = torch.empty_like(grad_out)
    plan_blend_backward(grad_out, grad_x, codes, perm, src, as_levels(lam), gh, gw, from_mask)()
    return grad_x


def blend_regions_forward(x: Tensor, regions: Tensor, perm: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(mixed, lam_eff) of the region blend. One launch; ``regions`` of any integer dtype is read as is."""
    gh, gw = regions.shape[1:]
    with device_guard(x):
        return launch_blend(x, regions.contiguous(), perm, lam, gh, gw, from_mask=False)


def blend_regions_backward(grad_out: Tensor, regions: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient w.r.t. x of ``blend_regions_forward``'s ``mixed``. One launch plus the inverse permutation."""
    gh, gw = regions.shape[1:]
    with device_guard(grad_out):
        return launch_blend_backward(grad_out, regions.contiguous(), perm, lam, gh, gw, from_mask=False)
