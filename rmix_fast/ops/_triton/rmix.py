"""Triton kernels and launchers of R-Mix: three launches per forward, one per backward, no float atomics.

1. ``cell_saliency_partial_kernel``: one program per (sample, cell row, band of rows). It reads its rows
   of ``grad`` once, in memory order (a pixel's channels together, so channels_last reads contiguous
   runs), and writes per-column sums of sqrt(mean_c g^2) over the band.
2. ``cell_threshold_kernel``: one program per sample. It sums each cell's column sums in an order fixed
   relative to the cell (bands in turn, then the cell's own columns), so cells with identical content get
   identical sums wherever they sit; finds the two order statistics around the q-quantile by rank
   counting (no sort), interpolates exactly as ``torch.quantile`` and writes the int8 "top" mask.
3. The blend engine's kernel (``blend_regions.blend_kernel``), reading the cell modes from the two
   samples' top masks.

The grid p and the cell size are runtime arguments the JIT does not specialise on: the paper's grids
(p in {2, 4}, drawn per batch) share one compiled variant per dtype and layout. Inputs are assumed
validated by ``rmix_fast.rmix``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops._triton._launch import (
    TL_DTYPE,
    Launch,
    as_levels,
    device_guard,
    needs_wide_offsets,
)
from rmix_fast.ops._triton._math import div_rn
from rmix_fast.ops._triton.blend_regions import launch_blend, launch_blend_backward

# The per-sample threshold holds the p*p cell values of a sample in one program; beyond this it stops being cheap.
MAX_GRID = 64

ROWS_PER_PROGRAM = 16  # rows of a cell row one saliency program reads
_SALIENCY_TILE = 4096  # elements of one (rows x columns x channels) grad tile
_MAX_COLUMNS = 128
_CELLS_PER_STEP = 64  # cells the threshold program sums at once
_CELL_COLUMNS = 16  # a cell's columns summed at once, in the same order for every cell
_MIN_CELL_BLOCK = 16  # grids up to 4 x 4 share one threshold variant


@triton.jit
def _sqrt(a, ACC: tl.constexpr):
    """Correctly rounded sqrt, as torch computes it."""
    if ACC == tl.float64:
        return tl.sqrt(a)
    else:
        return tl.sqrt_rn(a)


@triton.jit(do_not_specialize=["p", "cell_h", "n_split"])
def cell_saliency_partial_kernel(
    grad_ptr,
    part_ptr,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    p,
    cell_h,
    n_split,
    C: tl.constexpr,
    W: tl.constexpr,
    CP: tl.constexpr,
    ROWS_PER_PROG: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
    WIDE: tl.constexpr,
    ACC: tl.constexpr,
):
    """part[b, i, s, w] = sum over band s of cell row i of sqrt(mean_c grad[b, c, h, w]^2), rows in band order."""
    pid = tl.program_id(0)
    split = pid % n_split
    cell_row = (pid // n_split) % p
    b = (pid // (n_split * p)).to(tl.int64)
    row_start = cell_row * cell_h + split * ROWS_PER_PROG
    row_end = tl.minimum(row_start + ROWS_PER_PROG, (cell_row + 1) * cell_h)
    base = grad_ptr + b * stride_b
    chans = tl.arange(0, CP)[None, None, :]
    out = part_ptr + ((b * p + cell_row) * n_split + split) * W
    for w0 in range(0, W, BLOCK_W):
        cols = w0 + tl.arange(0, BLOCK_W)
        col_ok = cols < W
        col_sum = tl.zeros([BLOCK_W], dtype=ACC)
        for r0 in range(0, ROWS_PER_PROG, BLOCK_R):  # integer bounds: the band's last rows are masked
            rows = (row_start + r0 + tl.arange(0, BLOCK_R))[:, None, None]
            ok = (rows < row_end) & col_ok[None, :, None] & (chans < C)
            if WIDE:
                offs = rows.to(tl.int64) * stride_h + cols.to(tl.int64)[None, :, None] * stride_w + chans * stride_c
            else:
                offs = rows * stride_h + cols[None, :, None] * stride_w + chans * stride_c
            g = tl.load(base + offs, mask=ok, other=0.0).to(ACC)
            mean_sq = div_rn(tl.sum(g * g, axis=2), tl.full([BLOCK_R, BLOCK_W], C, ACC), ACC)
            # masked-out entries are sqrt(0) = 0 and add nothing
            col_sum += tl.sum(_sqrt(mean_sq, ACC), axis=0)
        tl.store(out + cols, col_sum, mask=col_ok)


@triton.jit(do_not_specialize=["p", "cell_w", "n_split", "cell_area"])
def cell_threshold_kernel(
    part_ptr,
    q_ptr,
    sal_ptr,
    mask_ptr,
    p,
    cell_w,
    n_split,
    cell_area,
    W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_J: tl.constexpr,
    ACC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    N = p * p
    sal_row = sal_ptr + b * N
    # Cell sums, in an order fixed relative to the cell: bands in turn, each band's cell columns in chunks
    # of BLOCK_K, each chunk summed as one tree over the cell-local column index.
    for c0 in range(0, N, BLOCK_C):
        n = c0 + tl.arange(0, BLOCK_C)
        n_ok = n < N
        first_col = part_ptr + ((b * p + n // p) * n_split) * W + (n % p) * cell_w
        total = tl.zeros([BLOCK_C], dtype=ACC)
        for s in range(0, n_split):
            band = tl.zeros([BLOCK_C], dtype=ACC)
            for k0 in range(0, cell_w, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                ok = n_ok[:, None] & (k < cell_w)[None, :]
                band += tl.sum(tl.load(first_col[:, None] + s * W + k[None, :], mask=ok, other=0.0), axis=1)
            total += band
        tl.store(sal_row + n, div_rn(total, tl.full([BLOCK_C], cell_area, ACC), ACC), mask=n_ok)
    tl.debug_barrier()  # the cell values below were stored by other threads
    idx = tl.arange(0, BLOCK_N)
    valid = idx < N
    sal = tl.load(sal_row + idx, mask=valid, other=0.0)
    elem_finite = tl.abs(sal) < float("inf")  # False for inf and NaN
    all_finite = tl.sum((valid & ~elem_finite).to(tl.int32), axis=0) == 0
    vals = tl.where(valid, tl.where(elem_finite, sal, 0.0), float("inf"))
    tl.debug_barrier()  # every thread read its values before they are overwritten
    tl.store(sal_row + idx, vals, mask=valid)
    tl.debug_barrier()  # the chunks below read values other threads stored
    # Order statistics by counting, not sorting: the k-th smallest value v satisfies
    # #{< v} <= k < #{<= v}. Exact, and O(N^2 / BLOCK_J) cheap compare-and-sum steps.
    n_less = tl.zeros([BLOCK_N], dtype=tl.int32)
    n_less_eq = tl.zeros([BLOCK_N], dtype=tl.int32)
    for j0 in range(0, N, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        other = tl.load(sal_row + j, mask=j < N, other=float("inf"))
        n_less += tl.sum((other[None, :] < vals[:, None]).to(tl.int32), axis=1)
        n_less_eq += tl.sum((other[None, :] <= vals[:, None]).to(tl.int32), axis=1)
    # torch.quantile, linear: rank = q*(n-1); lerp(v[floor], v[ceil], rank - floor) as torch.lerp does
    rank = tl.load(q_ptr + b).to(ACC) * (N - 1).to(ACC)
    below = tl.floor(rank)
    weight = rank - below
    k_lo = below.to(tl.int32)
    k_hi = tl.ceil(rank).to(tl.int32)
    lo = tl.max(tl.where(valid & (n_less <= k_lo) & (k_lo < n_less_eq), vals, -float("inf")), axis=0)
    hi = tl.max(tl.where(valid & (n_less <= k_hi) & (k_hi < n_less_eq), vals, -float("inf")), axis=0)
    t = tl.where(weight < 0.5, lo + weight * (hi - lo), hi - (hi - lo) * (1 - weight))
    top = (vals >= t) | (all_finite == 0)
    tl.store(mask_ptr + b * N + idx, top.to(tl.int8), mask=valid)


def plan_saliency(grad: Tensor, partials: Tensor, grid: int) -> Launch:
    """The partial-sum launch over (B, p, bands) programs; ``partials`` is (B, p, bands, W) of the accumulate
    dtype, bands = ceil((H / p) / ROWS_PER_PROGRAM)."""
    B, C, H, W = grad.shape
    cell_h = H // grid
    n_split = partials.shape[2]
    cp = triton.next_power_of_2(C)
    block_w = min(triton.next_power_of_2(W), _MAX_COLUMNS)
    block_r = max(1, min(ROWS_PER_PROGRAM, _SALIENCY_TILE // (block_w * cp)))
    return Launch(
        cell_saliency_partial_kernel,
        (B * grid * n_split,),
        (grad, partials, *grad.stride(), grid, cell_h, n_split),
        {"C": C, "W": W, "CP": cp, "ROWS_PER_PROG": ROWS_PER_PROGRAM, "BLOCK_R": block_r, "BLOCK_W": block_w,
         "WIDE": needs_wide_offsets([grad]), "ACC": TL_DTYPE[partials.dtype]},
    )  # fmt: skip


def plan_threshold(partials: Tensor, q: Tensor, cells: Tensor, mask: Tensor, grid: int, cell_area: int) -> Launch:
    """The per-sample threshold launch writing the (B, p*p) int8 ``mask``; ``cells`` is scratch of its shape."""
    B, _, n_split, W = partials.shape
    block_n = max(_MIN_CELL_BLOCK, triton.next_power_of_2(grid * grid))
    return Launch(
        cell_threshold_kernel,
        (B,),
        (partials, q, cells, mask, grid, W // grid, n_split, cell_area),
        {"W": W, "BLOCK_N": block_n, "BLOCK_C": min(block_n, _CELLS_PER_STEP), "BLOCK_K": _CELL_COLUMNS,
         "BLOCK_J": max(2, min(block_n, 8192 // block_n)), "ACC": TL_DTYPE[partials.dtype]},
    )  # fmt: skip


def saliency_mask(grad: Tensor, q: Tensor, grid: int) -> Tensor:
    """(B, C, H, W) grad, (B,) q -> (B, p*p) int8 top mask. Two launches; reads grad once."""
    B, _, H, W = grad.shape
    acc = accumulate_dtype(grad.dtype)
    cell_h = H // grid
    n_split = triton.cdiv(cell_h, ROWS_PER_PROGRAM)
    partials = torch.empty((B, grid, n_split, W), dtype=acc, device=grad.device)
    cells = torch.empty((B, grid * grid), dtype=acc, device=grad.device)  # scratch for the rank count
    mask = torch.empty((B, grid * grid), dtype=torch.int8, device=grad.device)
    plan_saliency(grad, partials, grid)()
    plan_threshold(partials, as_levels(q), cells, mask, grid, cell_h * (W // grid))()
    return mask


def rmix_forward(
    x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, q: Tensor, grid: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(mixed, lam_eff (B,) float32, mask (B, p, p) bool). Three launches."""
    B = x.shape[0]
    p = grid
    with device_guard(x):
        mask = saliency_mask(grad, q, p)
        mixed, lam_eff = launch_blend(x, mask, perm, lam, p, p, from_mask=True)
    return mixed, lam_eff, mask.view(torch.bool).view(B, p, p)


def rmix_backward(grad_out: Tensor, mask: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient w.r.t. x of ``rmix_forward``'s ``mixed``. One launch plus the inverse permutation."""
    p = mask.shape[-1]
    with device_guard(grad_out):
        return launch_blend_backward(grad_out, mask.view(torch.int8).contiguous(), perm, lam, p, p, from_mask=True)
