"""Launchers for the R-Mix Triton kernels: layout detection, launch shapes, output allocation.

Inputs are assumed validated by ``rmix_fast.rmix``. On CPU tensors the kernels only run when
``TRITON_INTERPRET=1`` was set before ``rmix_fast`` was imported (see ``INTERPRETED``).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from rmix_fast.reference.rmix import accumulate_dtype
from rmix_fast.triton_kernels import rmix_kernels as K

# Kernels are decorated at import; the interpreter is chosen then, not per call.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The per-sample threshold holds the p*p cell values of a sample in one program; beyond this it stops being cheap.
MAX_GRID = 64

_BLEND_BLOCK = 1024
_COUNT_BLOCK = 4096  # cells counted per step for lam_eff
_SALIENCY_TILE = 4096  # elements of one (rows x cols) grad tile
_SALIENCY_ROWS_PER_PROGRAM = 16

_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def _layout(src: Tensor, dst: Tensor) -> int:
    """LAYOUT_NCHW / LAYOUT_NHWC when both tensors are dense in that order, else LAYOUT_STRIDED."""
    if src.is_contiguous() and dst.is_contiguous():
        return K.LAYOUT_NCHW
    cl = torch.channels_last
    if src.is_contiguous(memory_format=cl) and dst.is_contiguous(memory_format=cl):
        return K.LAYOUT_NHWC
    return K.LAYOUT_STRIDED


def _device_guard(t: Tensor) -> contextlib.AbstractContextManager:
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _index_tensor(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.int32, torch.int64) else t.to(torch.int64)


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
    K.cell_saliency_partial_kernel[(B, p, n_split)](
        grad, partials, sb, sc, sh, sw,
        C=C, W=W, P=p, CELL_H=cell_h, CELL_W=cell_w, ROWS_PER_PROG=rows_per_prog, N_SPLIT=n_split,
        BLOCK_R=block_r, BLOCK_W=block_w, BLOCK_P=max(2, triton.next_power_of_2(p)), ACC=_TL_DTYPE[acc],
    )  # fmt: skip
    block_n = max(2, triton.next_power_of_2(p * p))
    block_j = max(2, min(block_n, 8192 // block_n))  # (block_n x block_j) compare tile stays <= 8K
    K.cell_threshold_kernel[(B,)](
        partials, q, cells, mask,
        P=p, N_SPLIT=n_split, CELL_AREA=cell_h * cell_w, BLOCK_N=block_n, BLOCK_J=block_j,
        ACC=_TL_DTYPE[acc],
    )  # fmt: skip
    return mask


def _blend(x: Tensor, codes: Tensor, perm: Tensor, lam: Tensor, gh: int, gw: int, from_mask: bool):
    """One blend launch: (mixed, lam_eff). ``codes`` is R-Mix's (B, p*p) int8 top mask (``from_mask``)
    or a (B, gh, gw) region code map."""
    B, C, H, W = x.shape
    mixed = torch.empty_like(x)  # preserves x's memory format
    lam_eff = torch.empty(B, dtype=torch.float32, device=x.device)
    K.blend_kernel[(triton.cdiv(C * H * W, _BLEND_BLOCK), B)](
        x, mixed, codes, perm, lam, lam_eff, *x.stride(), *mixed.stride(),
        C=C, H=H, W=W, GH=gh, GW=gw, LAYOUT=_layout(x, mixed), FROM_MASK=from_mask,
        BLOCK=_BLEND_BLOCK, BLOCK_N=min(max(2, triton.next_power_of_2(gh * gw)), _COUNT_BLOCK),
        CD=_TL_DTYPE[accumulate_dtype(x.dtype)],
    )  # fmt: skip
    return mixed, lam_eff


def _blend_backward(grad_out: Tensor, codes: Tensor, perm: Tensor, lam: Tensor, gh: int, gw: int, from_mask: bool):
    B, C, H, W = grad_out.shape
    src = torch.argsort(perm)  # src[b]: the sample that takes b as its partner
    grad_x = torch.empty_like(grad_out)
    K.blend_backward_kernel[(triton.cdiv(C * H * W, _BLEND_BLOCK), B)](
        grad_out, grad_x, codes, perm, src, lam, *grad_out.stride(), *grad_x.stride(),
        C=C, H=H, W=W, GH=gh, GW=gw, LAYOUT=_layout(grad_out, grad_x), FROM_MASK=from_mask,
        BLOCK=_BLEND_BLOCK, CD=_TL_DTYPE[accumulate_dtype(grad_out.dtype)],
    )  # fmt: skip
    return grad_x


def rmix_forward(
    x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, q: Tensor, grid: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(mixed, lam_eff (B,) float32, mask (B, p, p) bool). Three launches."""
    B = x.shape[0]
    p = grid
    perm = _index_tensor(perm)
    with _device_guard(x):
        mask = saliency_mask(grad, q, p)
        mixed, lam_eff = _blend(x, mask, perm, lam, p, p, from_mask=True)
    return mixed, lam_eff, mask.view(torch.bool).view(B, p, p)


def rmix_backward(grad_out: Tensor, mask: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient w.r.t. x of ``rmix_forward``'s ``mixed``. One launch plus the inverse permutation."""
    p = mask.shape[-1]
    with _device_guard(grad_out):
        return _blend_backward(grad_out, mask.view(torch.int8), _index_tensor(perm), lam, p, p, from_mask=True)


def blend_regions_forward(x: Tensor, regions: Tensor, perm: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(mixed, lam_eff) of the region blend. One launch; ``regions`` of any integer dtype is read as is."""
    gh, gw = regions.shape[1:]
    with _device_guard(x):
        return _blend(x, regions.contiguous(), _index_tensor(perm), lam, gh, gw, from_mask=False)


def blend_regions_backward(grad_out: Tensor, regions: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient w.r.t. x of ``blend_regions_forward``'s ``mixed``. One launch plus the inverse permutation."""
    gh, gw = regions.shape[1:]
    with _device_guard(grad_out):
        return _blend_backward(grad_out, regions.contiguous(), _index_tensor(perm), lam, gh, gw, from_mask=False)
