"""Triton kernels and launchers of ``blend_sources`` (AdAutoMix's multi-source soft-mask blend): one launch
forward, three backward (the inverse permutations, a tiny one; grad_x; grad_logits), no float atomics.

    W = normalize(upsample(logits, scale, mode))      mixed[b] = sum_i W[b, i] * x[index[i, b]]

Forward (``blend_sources_kernel``). A program owns a block of one sample's pixels (the C planes of
NCHW and strided images are walked in a channel loop, so the weights are computed once per pixel) or,
for channels_last images, a block of its interleaved elements (each element works out its pixel's
weights itself: a C=3 pixel is 6 or 12 bytes, so only the flat element order gives 128-bit accesses).
The program upsamples the (B, N, h, w) logits for its pixels in registers (bilinear: the four corners of
each source, gathered from the small logits tensor; nearest: one), normalises them over the sources,
reads each source's values once and writes mixed once: the (B, N, H, W) weights never reach memory.

Backward. ``index``'s rows are permutations, so the gradient w.r.t. x is a gather:
1. ``inverse_permutation_kernel`` writes inverse[i, index[i, b]] = b (N * B ints; each slot written once).
2. ``blend_sources_grad_x_kernel``, per (sample j, pixel block): with b_i = inverse[i, j],
   grad_x[j] = sum_i W[b_i, i] * g[b_i] (sources in order). The same program reads x[j], which is
   exactly source i of sample b_i, so it also forms dW[b_i, i] = sum_c g[b_i] * x[j] (the derivative of
   mixed[b_i] w.r.t. its weight i) at no extra read of g, and stores it in a (B, N, H*W) scratch of the
   accumulate dtype. The scratch is N / C of the image's elements in float32 (float64 for float64 x);
   recomputing dW in step 3 instead would read g and the N sources again for each of the ~4 low-res
   cells whose windows cover a pixel.
3. ``blend_sources_grad_logits_kernel``, per (sample, block of low-res cells): each cell gathers the
   high-res window of pixels whose interpolation used it (2*scale rows and columns for bilinear, scale
   for nearest, one more on each side where 1/scale is inexact), recomputes W there, takes the softmax's
   backward dz_i = W_i (dW_i - sum_k W_k dW_k) and sums the window weighted by the interpolation weight
   the pixel gave the cell: the upsampling's adjoint as a gather, summed in a fixed order.

The upsampling follows PyTorch's CPU kernels (aten/src/ATen/native/UpSample.h): bilinear, align_corners
False: src = max((dst + 0.5) * (1 / scale) - 0.5, 0) in the logits' accumulate dtype, i0 = floorf(src)
capped at h - 1, i1 = i0 + 1 capped, weight src - i0; nearest: dst at scale 1, dst >> 1 at scale 2, else
floor(dst * float32(1 / scale)) capped. Bilinear at scale 1 is the identity, as the reference (which skips
the interpolation there) has it, so scale 1 runs as nearest. Each interpolation is rounded as
(v00 * wx0 + v01 * wx1) * wy0 + (v10 * wx0 + v11 * wx1) * wy1 with no FMA; PyTorch's own CPU kernels
round differently depending on the channel count, the output size and the thread count, so the
reference and this backend agree to rounding, not bit for bit. Softmax: max, exp, sum in source order,
one correctly rounded division.

One compiled variant per (x dtype, logits dtype, layout, N, mode, normalisation, WIDE, block shape):
every size, stride and the scale are runtime arguments the JIT does not specialise on, so batch size
and draws never recompile; block shapes follow from the image size, dtype and N (grad_logits': from the
low-res map and the scale), fixed within a training run. 128-bit accesses come from the
launcher's alignment facts (``tl.multiple_of``), not from specialisation. The grids are 1-D. In-sample
offsets of images are 32-bit unless a sample spans 2**31 elements (``WIDE``); a sample's base offset is
always 64-bit. Inputs are assumed validated by the public op.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops._triton._launch import (
    LAYOUT_NCHW,
    LAYOUT_NHWC,
    LAYOUT_STRIDED,
    TL_DTYPE,
    Launch,
    as_index,
    device_guard,
    needs_wide_offsets,
)
from rmix_fast.ops._triton._math import div_rn

__all__ = ["blend_sources_backward", "blend_sources_forward"]

MODE_BILINEAR = 0
MODE_NEAREST = 1
_MODES = {"bilinear": MODE_BILINEAR, "nearest": MODE_NEAREST}

_BLOCK = 1024  # pixels (channels_last: elements) one blend program covers
_SOURCE_TILE = 4096  # at most this many (source, pixel) weights held by one program
_VECTOR_BYTES = 16
_CELLS = 16  # at most this many low-res cells one grad_logits program covers
_WINDOW_TILE = 256  # (cell, window pixel) pairs one grad_logits step covers
_INVERSE_BLOCK = 1024

_IMAGE_STRIDES = [f"s{t}_{d}" for t in ("x", "o", "g") for d in "bchw"]
_LOGIT_STRIDES = [f"s{t}_{d}" for t in ("l", "r") for d in "bnhw"]
_RUNTIME = [*_IMAGE_STRIDES, *_LOGIT_STRIDES, "B", "C", "H", "W", "h", "w", "scale", "units", "blocks", "reach", "win"]


@triton.jit
def _pick(t, k, i: tl.constexpr):
    """Row i of a (NP, ...) per-source tensor, exactly (the other rows add +0)."""
    return tl.sum(tl.where(k == i, t, 0.0), axis=0)


@triton.jit
def _units(block, units, NV: tl.constexpr, VEC: tl.constexpr, WIDE: tl.constexpr):
    """A (NV, VEC) block of a sample's units (pixels or elements) and its (NV, 1) mask. The launcher makes
    VEC divide ``units``, so each vector is wholly in or out: the mask stays uniform over a vector and
    the loads compile to vector loads."""
    if WIDE:
        block = block.to(tl.int64)
    starts = (block * NV + tl.arange(0, NV)) * VEC  # first unit of each vector
    u = starts[:, None] + tl.arange(0, VEC)[None, :]
    return u, starts[:, None] < units


@triton.jit
def _linear_source(dst, n_in, inv, WD: tl.constexpr):
    """PyTorch's bilinear source of output index ``dst`` (align_corners=False): (i0, i1, w0, w1)."""
    src = tl.maximum((dst.to(WD) + 0.5) * inv - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.float32).to(tl.int32), n_in - 1)  # floorf, as guard_index_and_lambda (src >= 0)
    w1 = tl.minimum(tl.maximum(src - i0.to(WD), 0.0), 1.0)
    i1 = i0 + (i0 < n_in - 1).to(tl.int32)
    return i0, i1, 1.0 - w1, w1


@triton.jit
def _nearest_source(dst, n_in, scale):
    """PyTorch's nearest_idx: the exact special cases of scale 1 and 2, else floor(dst * float32(1/scale))."""
    inv = (1.0 / scale.to(tl.float64)).to(tl.float32)
    general = tl.minimum(tl.floor(dst.to(tl.float32) * inv).to(tl.int32), n_in - 1)
    return tl.where(scale == 1, dst.to(tl.int32), tl.where(scale == 2, (dst >> 1).to(tl.int32), general))


@triton.jit
def _source_weights(lg, s_n, s_h, s_w, y, x, h, w, scale, ok,
                    N: tl.constexpr, NP: tl.constexpr, MODE: tl.constexpr, SOFTMAX: tl.constexpr,
                    WD: tl.constexpr):  # fmt: skip
    """(NP, *y.shape) weights of the N sources at pixels (y, x) (2-D) of the sample whose logits start at
    ``lg``, in WD; rows >= N are 0. Where ``ok`` is false nothing is read and the weights are junk."""
    k = tl.arange(0, NP)[:, None, None]
    live = (k < N) & ok[None, :, :]
    if MODE == 0:
        inv = (1.0 / scale.to(tl.float64)).to(WD)  # static_cast<opmath_t>(1.0 / scale), as PyTorch
        iy0, iy1, wy0, wy1 = _linear_source(y, h, inv, WD)
        ix0, ix1, wx0, wx1 = _linear_source(x, w, inv, WD)
        row0 = lg + k * s_n + (iy0 * s_h)[None, :, :]
        row1 = lg + k * s_n + (iy1 * s_h)[None, :, :]
        col0 = (ix0 * s_w)[None, :, :]
        col1 = (ix1 * s_w)[None, :, :]
        z00 = tl.load(row0 + col0, mask=live, other=0.0).to(WD)
        z01 = tl.load(row0 + col1, mask=live, other=0.0).to(WD)
        z10 = tl.load(row1 + col0, mask=live, other=0.0).to(WD)
        z11 = tl.load(row1 + col1, mask=live, other=0.0).to(WD)
        wx0 = wx0[None, :, :]
        wx1 = wx1[None, :, :]
        z = (z00 * wx0 + z01 * wx1) * wy0[None, :, :] + (z10 * wx0 + z11 * wx1) * wy1[None, :, :]
    else:
        iy = _nearest_source(y, h, scale)
        ix = _nearest_source(x, w, scale)
        z = tl.load(lg + k * s_n + (iy * s_h + ix * s_w)[None, :, :], mask=live, other=0.0).to(WD)
    if SOFTMAX:
        z = tl.where(k < N, z, -float("inf"))
        e = tl.exp(z - tl.max(z, axis=0)[None, :, :])  # the padding rows: exp(-inf) = 0
        total = _pick(e, k, 0)
        for i in tl.static_range(1, N):  # in source order, as torch.softmax
            total = total + _pick(e, k, i)
        z = div_rn(e, total[None, :, :], WD)
    return z


@triton.jit
def _image_offsets(c, p, y, x, s_c, s_h, s_w, LAYOUT: tl.constexpr, WIDE: tl.constexpr, VEC: tl.constexpr):
    """In-sample offsets of channel ``c`` at pixels p = y * W + x (``p`` is 64-bit when WIDE)."""
    if LAYOUT == 0:  # NCHW: a channel's pixels are contiguous; the launcher made VEC divide the plane
        if WIDE:
            plane = c * s_c.to(tl.int64)  # c is a plain int in the interpreter
        else:
            plane = c * s_c
        off = tl.multiple_of(plane, VEC) + p
    elif LAYOUT == 1:  # NHWC walked pixel by pixel: a pixel's channels are adjacent
        off = p * s_w + c
    else:
        if WIDE:
            off = c * s_c.to(tl.int64) + y.to(tl.int64) * s_h + x.to(tl.int64) * s_w
        else:
            off = c * s_c + y * s_h + x * s_w
    return off


@triton.jit(do_not_specialize=_RUNTIME)
def blend_sources_kernel(
    x_ptr,
    out_ptr,
    index_ptr,
    lg_ptr,
    sx_b,
    sx_c,
    sx_h,
    sx_w,
    so_b,
    so_c,
    so_h,
    so_w,
    sl_b,
    sl_n,
    sl_h,
    sl_w,
    B,
    C,
    H,
    W,
    h,
    w,
    scale,
    units,
    blocks,
    N: tl.constexpr,
    NP: tl.constexpr,
    MODE: tl.constexpr,
    SOFTMAX: tl.constexpr,
    LAYOUT: tl.constexpr,
    WIDE: tl.constexpr,
    NV: tl.constexpr,
    VEC: tl.constexpr,
    CD: tl.constexpr,
    WD: tl.constexpr,
):
    """mixed[b] = sum_i W[b, i] * x[index[i, b]] over one block of sample b. ``units``: H*W pixels, or
    H*W*C elements for channels_last (LAYOUT 1), whose offsets are then the units themselves."""
    pid = tl.program_id(0)
    b = (pid // blocks).to(tl.int64)
    u, ok = _units(pid % blocks, units, NV, VEC, WIDE)
    if LAYOUT == 1:
        p = u // C
        n_channels = 1  # the elements already span the channels
    else:
        p = u
        n_channels = C
    y = p // W
    x = p - y * W
    k = tl.arange(0, NP)[:, None, None]
    wt = _source_weights(lg_ptr + b * sl_b, sl_n, sl_h, sl_w, y, x, h, w, scale, ok, N, NP, MODE, SOFTMAX, WD)
    wt = wt.to(CD)  # the weights in the logits' accumulate dtype, then the blend's (as the reference)
    out_base = tl.multiple_of(b * so_b, VEC)
    for c in range(n_channels):
        if LAYOUT == 1:
            src_off = u
            dst_off = u
        else:
            src_off = _image_offsets(c, p, y, x, sx_c, sx_h, sx_w, LAYOUT, WIDE, VEC)
            dst_off = _image_offsets(c, p, y, x, so_c, so_h, so_w, LAYOUT, WIDE, VEC)
        acc = tl.zeros((NV, VEC), dtype=CD)
        for i in tl.static_range(N):  # in source order, as the reference sums
            src = tl.load(index_ptr + i * B + b).to(tl.int64)
            xi = tl.load(x_ptr + tl.multiple_of(src * sx_b, VEC) + src_off, mask=ok, other=0.0).to(CD)
            acc = acc + _pick(wt, k, i) * xi
        tl.store(out_ptr + out_base + dst_off, acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["B", "units"])
def inverse_permutation_kernel(index_ptr, inverse_ptr, B, units, BLOCK: tl.constexpr):
    """inverse[i, index[i, b]] = b for the (N, B) index (each row a permutation: every slot written once)."""
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = t < units
    row = t // B
    dst = tl.load(index_ptr + t, mask=ok, other=0).to(tl.int64)
    tl.store(inverse_ptr + row.to(tl.int64) * B + dst, (t - row * B).to(tl.int32), mask=ok)


@triton.jit(do_not_specialize=_RUNTIME)
def blend_sources_grad_x_kernel(
    g_ptr,
    x_ptr,
    gx_ptr,
    dw_ptr,
    inverse_ptr,
    lg_ptr,
    sg_b,
    sg_c,
    sg_h,
    sg_w,
    sx_b,
    sx_c,
    sx_h,
    sx_w,
    so_b,
    so_c,
    so_h,
    so_w,
    sl_b,
    sl_n,
    sl_h,
    sl_w,
    B,
    C,
    H,
    W,
    h,
    w,
    scale,
    units,
    blocks,
    N: tl.constexpr,
    NP: tl.constexpr,
    MODE: tl.constexpr,
    SOFTMAX: tl.constexpr,
    LAYOUT: tl.constexpr,
    WIDE: tl.constexpr,
    NV: tl.constexpr,
    VEC: tl.constexpr,
    CD: tl.constexpr,
    WD: tl.constexpr,
):
    """grad_x[j] = sum_i W[b_i, i] * g[b_i] with b_i = inverse[i, j], and the scratch row
    dW[b_i, i] = sum_c g[b_i, c] * x[j, c] (x[j] is source i of b_i), over one block of j's H*W pixels."""
    pid = tl.program_id(0)
    j = (pid // blocks).to(tl.int64)
    p, ok = _units(pid % blocks, units, NV, VEC, WIDE)
    y = p // W
    x = p - y * W
    k = tl.arange(0, NP)[:, None, None]
    wt = tl.zeros((NP, NV, VEC), dtype=WD)
    for i in tl.static_range(N):  # W[b_i, i]: a softmax over b_i's sources each
        bi = tl.load(inverse_ptr + i * B + j).to(tl.int64)
        wi = _source_weights(lg_ptr + bi * sl_b, sl_n, sl_h, sl_w, y, x, h, w, scale, ok, N, NP, MODE, SOFTMAX, WD)
        wt = tl.where(k == i, wi, wt)
    wt = wt.to(CD)
    # Everything per source stays in (NP, NV, VEC) tiles, loaded as such, so the channel loop never moves
    # values between register layouts (a 2-D load combined with a 3-D tile costs a shared-memory trip).
    live = (k < N) & ok[None, :, :]
    rows = tl.load(inverse_ptr + k * B + j, mask=k < N, other=0).to(tl.int64)  # (NP, 1, 1): b_i
    g_rows = g_ptr + tl.multiple_of(rows * sg_b, [VEC, VEC, VEC])
    x_row = x_ptr + tl.multiple_of(j * sx_b, VEC) + tl.zeros((NP, 1, 1), dtype=tl.int32)
    dw = tl.zeros((NP, NV, VEC), dtype=CD)
    for c in range(C):
        g_off = _image_offsets(c, p, y, x, sg_c, sg_h, sg_w, LAYOUT, WIDE, VEC)[None, :, :]
        x_off = _image_offsets(c, p, y, x, sx_c, sx_h, sx_w, LAYOUT, WIDE, VEC)[None, :, :]
        o_off = _image_offsets(c, p, y, x, so_c, so_h, so_w, LAYOUT, WIDE, VEC)
        g = tl.load(g_rows + g_off, mask=live, other=0.0).to(CD)  # g[b_i], row i
        xj = tl.sum(tl.load(x_row + x_off, mask=(k == 0) & live, other=0.0).to(CD), axis=0)  # read once: row 0
        dw = dw + g * xj[None, :, :]  # channels in order
        wg = wt * g
        acc = _pick(wg, k, 0)
        for i in tl.static_range(1, N):  # in source order, as the reference sums
            acc = acc + _pick(wg, k, i)
        tl.store(gx_ptr + tl.multiple_of(j * so_b, VEC) + o_off, acc.to(gx_ptr.dtype.element_ty), mask=ok)
    dw_rows = dw_ptr + tl.multiple_of((rows * N + k) * units, [VEC, VEC, VEC])
    tl.store(dw_rows + p[None, :, :], dw, mask=live)


@triton.jit(do_not_specialize=_RUNTIME)
def blend_sources_grad_logits_kernel(
    dw_ptr,
    lg_ptr,
    gl_ptr,
    sl_b,
    sl_n,
    sl_h,
    sl_w,
    sr_b,
    sr_n,
    sr_h,
    sr_w,
    H,
    W,
    h,
    w,
    scale,
    blocks,
    reach,
    win,
    N: tl.constexpr,
    NP: tl.constexpr,
    MODE: tl.constexpr,
    SOFTMAX: tl.constexpr,
    CELLS: tl.constexpr,
    STEP: tl.constexpr,
    WD: tl.constexpr,
):
    """grad_logits[b, :, cy, cx] for a block of low-res cells: the sum over the (win x win) window of
    pixels starting ``reach`` pixels above and left of the cell's first pixel, of the interpolation weight
    each pixel gave the cell times dz, the softmax's backward there. Window slots are summed across steps
    in order, then as one tree: a fixed order, no atomics."""
    pid = tl.program_id(0)
    b = (pid // blocks).to(tl.int64)
    cell_ids = (pid % blocks) * CELLS + tl.arange(0, CELLS)
    cells = cell_ids[:, None]  # (CELLS, 1)
    cell_ok = cells < h * w
    cy = cells // w
    cx = cells - cy * w
    top = cy * scale - reach
    left = cx * scale - reach
    k = tl.arange(0, NP)[:, None, None]
    lg = lg_ptr + b * sl_b
    plane = H * W
    dw_rows = dw_ptr + (b * N + k) * plane  # (NP, 1, 1) scratch rows of sample b
    if MODE == 0:
        inv = (1.0 / scale.to(tl.float64)).to(WD)
    acc = tl.zeros((NP, CELLS, STEP), dtype=WD)
    area = win * win
    for start in range(0, area, STEP):
        t = start + tl.arange(0, STEP)[None, :]  # (1, STEP) window slots
        wr = t // win
        y = top + wr
        x = left + (t - wr * win)
        ok = cell_ok & (t < area) & (y >= 0) & (y < H) & (x >= 0) & (x < W)
        y = tl.minimum(tl.maximum(y, 0), H - 1)
        x = tl.minimum(tl.maximum(x, 0), W - 1)
        # the weight pixel (y, x) gave cell (cy, cx): the sum of its corner terms that are this cell
        if MODE == 0:
            iy0, iy1, wy0, wy1 = _linear_source(y, h, inv, WD)
            ix0, ix1, wx0, wx1 = _linear_source(x, w, inv, WD)
            wy = tl.where(iy0 == cy, wy0, 0.0) + tl.where(iy1 == cy, wy1, 0.0)
            wx = tl.where(ix0 == cx, wx0, 0.0) + tl.where(ix1 == cx, wx1, 0.0)
            used = ok & ((iy0 == cy) | (iy1 == cy)) & ((ix0 == cx) | (ix1 == cx))
            weight = wy * wx
        else:
            used = ok & (_nearest_source(y, h, scale) == cy) & (_nearest_source(x, w, scale) == cx)
            weight = tl.full((CELLS, STEP), 1.0, WD)
        dz = tl.load(dw_rows + (y * W + x)[None, :, :], mask=(k < N) & ok[None, :, :], other=0.0).to(WD)
        if SOFTMAX:
            wt = _source_weights(lg, sl_n, sl_h, sl_w, y, x, h, w, scale, ok, N, NP, MODE, SOFTMAX, WD)
            prod = wt * dz
            dot = _pick(prod, k, 0)
            for i in tl.static_range(1, N):  # in source order, as softmax's backward
                dot = dot + _pick(prod, k, i)
            dz = wt * (dz - dot[None, :, :])
        acc += tl.where(used[None, :, :], weight[None, :, :] * dz, 0.0)
    total = tl.sum(acc, axis=2)  # (NP, CELLS)
    kk = tl.arange(0, NP)[:, None]
    cyy = (cell_ids // w)[None, :]
    cxx = (cell_ids - (cell_ids // w) * w)[None, :]
    dst = gl_ptr + b * sr_b + kk * sr_n + cyy * sr_h + cxx * sr_w
    tl.store(dst, total.to(gl_ptr.dtype.element_ty), mask=(kk < N) & (cell_ids < h * w)[None, :])


def _output_format(t: Tensor) -> torch.memory_format:
    """The reference's output layout: channels_last for a channels_last (and not contiguous) tensor, else
    contiguous."""
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _common_layout(*ts: Tensor) -> int:
    if all(t.is_contiguous() for t in ts):
        return LAYOUT_NCHW
    if all(t.is_contiguous(memory_format=torch.channels_last) for t in ts):
        return LAYOUT_NHWC
    return LAYOUT_STRIDED


def _tiling(units: int, element_size: int, dense: bool, sources: int) -> tuple[int, int, int]:
    """(blocks per sample, NV, VEC) for a sample of ``units``: VEC units of 16 bytes where dense (VEC
    divides ``units``, so a vector's mask is uniform), NV vectors per block."""
    vec = _VECTOR_BYTES // element_size if dense else 1
    while units % vec:
        vec //= 2
    block = max(vec, min(triton.next_power_of_2(max(units, 1)), _BLOCK, _SOURCE_TILE // sources))
    return triton.cdiv(units, block), block // vec, vec


def _source_constants(logits: Tensor, scale: int, mode: str, normalize: str) -> dict:
    n = logits.shape[1]
    return {
        "N": n,
        "NP": triton.next_power_of_2(n),
        "MODE": MODE_NEAREST if scale == 1 else _MODES[mode],  # bilinear at scale 1 is the identity
        "SOFTMAX": normalize == "softmax",
        "WD": TL_DTYPE[accumulate_dtype(logits.dtype)],
    }


def plan_forward(
    x: Tensor, out: Tensor, index: Tensor, logits: Tensor, scale: int, mode: str, normalize: str
) -> Launch:
    """The forward launch writing ``out``; ``index`` (N, B) read at unit stride."""
    B, C, H, W = x.shape
    h, w = logits.shape[2:]
    layout = _common_layout(x, out)
    units = H * W * C if layout == LAYOUT_NHWC else H * W
    consts = _source_constants(logits, scale, mode, normalize)
    blocks, nv, vec = _tiling(units, x.element_size(), layout != LAYOUT_STRIDED, consts["NP"])
    return Launch(
        blend_sources_kernel,
        (B * blocks,),
        (x, out, index, logits, *x.stride(), *out.stride(), *logits.stride(), B, C, H, W, h, w, scale, units, blocks),
        {**consts, "LAYOUT": layout, "WIDE": needs_wide_offsets([x, out]), "NV": nv, "VEC": vec,
         "CD": TL_DTYPE[accumulate_dtype(x.dtype)]},
    )  # fmt: skip


def plan_inverse(index: Tensor, inverse: Tensor) -> Launch:
    """The launch writing the (N, B) int32 ``inverse`` of the (N, B) ``index`` (read at unit stride)."""
    n, B = index.shape
    units = n * B
    return Launch(
        inverse_permutation_kernel,
        (triton.cdiv(units, _INVERSE_BLOCK),),
        (index, inverse, B, units),
        {"BLOCK": _INVERSE_BLOCK},
    )


def plan_grad_x(
    grad_out: Tensor, x: Tensor, grad_x: Tensor, scratch: Tensor, inverse: Tensor, logits: Tensor, scale: int,
    mode: str, normalize: str,
) -> Launch:  # fmt: skip
    """The launch writing ``grad_x`` and the (B, N, H*W) dW ``scratch`` (x's accumulate dtype)."""
    B, C, H, W = grad_out.shape
    h, w = logits.shape[2:]
    layout = _common_layout(grad_out, x, grad_x)
    consts = _source_constants(logits, scale, mode, normalize)
    # Pixel by pixel (dW sums a pixel's channels): only NCHW planes give whole vectors. Elsewhere VEC = 1,
    # so the scratch rows, which could be stored in vectors, do not force a register shuffle per channel.
    element_size = max(t.element_size() for t in (grad_out, x, grad_x))
    blocks, nv, vec = _tiling(H * W, element_size, layout == LAYOUT_NCHW, consts["NP"])
    return Launch(
        blend_sources_grad_x_kernel,
        (B * blocks,),
        (grad_out, x, grad_x, scratch, inverse, logits, *grad_out.stride(), *x.stride(), *grad_x.stride(),
         *logits.stride(), B, C, H, W, h, w, scale, H * W, blocks),
        {**consts, "LAYOUT": layout, "WIDE": needs_wide_offsets([grad_out, x, grad_x]), "NV": nv, "VEC": vec,
         "CD": TL_DTYPE[scratch.dtype]},
    )  # fmt: skip


def _window(scale: int, mode: int) -> tuple[int, int]:
    """(reach, win): the pixels that use low-res cell c along an axis lie in [c*scale - reach, ... + win).
    Bilinear: output o reads i0 = floor((o + 0.5) / scale - 0.5) and i0 + 1, so cell c serves the 2*scale
    outputs from c*scale - ceil(scale / 2); nearest: the scale outputs from c*scale. Exact where 1/scale
    is (a power of two); one more pixel each side otherwise, for the rounding of (o + 0.5) * (1/scale)."""
    pad = 0 if scale & (scale - 1) == 0 else 1
    if mode == MODE_BILINEAR:
        return (scale + 1) // 2 + pad, 2 * scale + 2 * pad
    return pad, scale + 2 * pad


def plan_grad_logits(
    scratch: Tensor, logits: Tensor, grad_logits: Tensor, scale: int, mode: str, normalize: str, H: int, W: int
) -> Launch:
    """The launch writing ``grad_logits`` from the dW ``scratch``."""
    B = logits.shape[0]
    h, w = logits.shape[2:]
    consts = _source_constants(logits, scale, mode, normalize)
    reach, win = _window(scale, consts["MODE"])
    cells = min(_CELLS, triton.next_power_of_2(max(h * w, 1)))
    step = min(_WINDOW_TILE // cells, triton.next_power_of_2(win * win))
    blocks = triton.cdiv(h * w, cells)
    return Launch(
        blend_sources_grad_logits_kernel,
        (B * blocks,),
        (scratch, logits, grad_logits, *logits.stride(), *grad_logits.stride(), H, W, h, w, scale, blocks, reach,
         win),
        {**consts, "CELLS": cells, "STEP": step},
    )  # fmt: skip


def blend_sources_forward(x: Tensor, index: Tensor, logits: Tensor, scale: int, mode: str, normalize: str) -> Tensor:
    """mixed (x's dtype; channels_last if x is, else contiguous). One launch."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_output_format(x))
    if out.numel():
        with device_guard(x):
            plan_forward(x, out, as_index(index), logits, scale, mode, normalize)()
    return out


def blend_sources_backward(
    grad_out: Tensor, x: Tensor, index: Tensor, logits: Tensor, scale: int, mode: str, normalize: str
) -> tuple[Tensor, Tensor]:
    """(grad_x in grad_out's dtype and layout rule, grad_logits in logits' dtype). Three launches: the
    inverse permutations, grad_x with the dW scratch, grad_logits."""
    index = as_index(index)
    n, B = index.shape
    _, _, H, W = grad_out.shape
    grad_x = torch.empty(grad_out.shape, dtype=grad_out.dtype, device=grad_out.device,
                         memory_format=_output_format(grad_out))  # fmt: skip
    grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # contiguous, as the fake
    if grad_out.numel() == 0:
        return grad_x, grad_logits.zero_()
    inverse = torch.empty((n, B), dtype=torch.int32, device=index.device)
    scratch = torch.empty((B, n, H * W), dtype=accumulate_dtype(x.dtype), device=x.device)
    with device_guard(grad_out):
        plan_inverse(index, inverse)()
        plan_grad_x(grad_out, x, grad_x, scratch, inverse, logits, scale, mode, normalize)()
        plan_grad_logits(scratch, logits, grad_logits, scale, mode, normalize, H, W)()
    return grad_x, grad_logits
