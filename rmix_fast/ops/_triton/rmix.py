"""Triton kernels and launchers of R-Mix: three launches per forward, one per backward, no float atomics.

1. ``cell_saliency_partial_kernel``: grid (B, p, splits). Each program reads a band of rows of one
   cell row of ``grad`` once and writes per-cell partial sums of sqrt(mean_c g^2).
2. ``cell_threshold_kernel``: grid (B,). Sums the partials in a fixed order (deterministic), finds
   the two order statistics around the q-quantile by rank counting (no sort), interpolates exactly
   as ``torch.quantile`` and writes the int8 "top" mask.
3. The blend engine's kernel (``blend_regions.blend_kernel``), reading the cell modes from the two
   samples' top masks.

Inputs are assumed validated by ``rmix_fast.rmix``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops._triton._launch import INTERPRETED, TL_DTYPE, device_guard, index_tensor
from rmix_fast.ops._triton.blend_regions import launch_blend, launch_blend_backward

# The per-sample threshold holds the p*p cell values of a sample in one program; beyond this it stops being cheap.
MAX_GRID = 64

_SALIENCY_TILE = 4096  # elements of one (rows x cols) grad tile
_SALIENCY_ROWS_PER_PROGRAM = 16


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


def saliency_mask(grad: Tensor, q: Tensor, grid: int) -> Tensor:
    """(B, C, H, W) grad, (B,) q -> (B, p*p) int8 top mask. Two launches; reads grad once."""
    B, C, H, W = grad.shape
    p = grid
    cell_h, cell_w = H // p, W // p
    acc = accumulate_dtype(grad.dtype)
    block_w = min(triton.next_power_of_2(W), 256)
    block_r = max(1, min(triton.next_power_of_2(cell_h), _SALIENCY_TILE // block_w))
    rows_per_prog = cell_h if INTERPRETED else min(cell_h, max(block_r, _SALIENCY_ROWS_PER_PROGRAM))
    n_split = triton.cdiv(cell_h, rows_per_prog)
    partials = torch.empty((B, p, n_split, p), dtype=acc, device=grad.device)
    cells = torch.empty((B, p * p), dtype=acc, device=grad.device)  # scratch for the rank count
    mask = torch.empty((B, p * p), dtype=torch.int8, device=grad.device)
    sb, sc, sh, sw = grad.stride()
    cell_saliency_partial_kernel[(B, p, n_split)](
        grad, partials, sb, sc, sh, sw,
        C=C, W=W, P=p, CELL_H=cell_h, CELL_W=cell_w, ROWS_PER_PROG=rows_per_prog, N_SPLIT=n_split,
        BLOCK_R=block_r, BLOCK_W=block_w, BLOCK_P=max(2, triton.next_power_of_2(p)), ACC=TL_DTYPE[acc],
    )  # fmt: skip
    block_n = max(2, triton.next_power_of_2(p * p))
    block_j = max(2, min(block_n, 8192 // block_n))  # (block_n x block_j) compare tile stays <= 8K
    cell_threshold_kernel[(B,)](
        partials, q, cells, mask,
        P=p, N_SPLIT=n_split, CELL_AREA=cell_h * cell_w, BLOCK_N=block_n, BLOCK_J=block_j,
        ACC=TL_DTYPE[acc],
    )  # fmt: skip
    return mask


def rmix_forward(
    x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, q: Tensor, grid: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(mixed, lam_eff (B,) float32, mask (B, p, p) bool). Three launches."""
    B = x.shape[0]
    p = grid
    perm = index_tensor(perm)
    with device_guard(x):
        mask = saliency_mask(grad, q, p)
        mixed, lam_eff = launch_blend(x, mask, perm, lam, p, p, from_mask=True)
    return mixed, lam_eff, mask.view(torch.bool).view(B, p, p)


def rmix_backward(grad_out: Tensor, mask: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient w.r.t. x of ``rmix_forward``'s ``mixed``. One launch plus the inverse permutation."""
    p = mask.shape[-1]
    with device_guard(grad_out):
        return launch_blend_backward(grad_out, mask.view(torch.int8), index_tensor(perm), lam, p, p, from_mask=True)
