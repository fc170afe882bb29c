"""``blend_sources``'s reference: a per-pixel soft mix of N source images whose weights are upsampled from
low-resolution maps (AdAutoMix's mixing step, Qin et al., ICLR 2024). The ground truth of every backend.

    W = normalize(upsample(logits, scale, mode))            (B, N, H, W)
    mixed[b] = sum_i W[b, i] * x[index[i, b]]              (the sources summed in order i = 0, 1, ...)

``upsample`` is ``F.interpolate(logits, scale_factor=scale, mode="bilinear", align_corners=False)`` for
"bilinear" and pixel replication (``floor(dst / scale)``) for "nearest"; ``normalize`` is "softmax" (over the
N sources, per pixel) or "none" (the upsampled maps are the weights as they are). Each row of ``index`` is a
permutation of the batch, so the backward is a gather. Computed in float32 (float64 for float64 x), the
result in x's dtype; the weights in the logits' accumulate dtype.

The backward is written out (softmax backward, the upsampling's adjoint) rather than left to autograd: it
runs inside a custom op, below the autograd dispatch keys, where autograd records nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rmix_fast.ops._dtypes import accumulate_dtype

__all__ = ["blend_sources_backward", "blend_sources_forward", "blend_sources_weights"]

MODES = ("bilinear", "nearest")
NORMALIZE = ("softmax", "none")


def _upsample(z: Tensor, scale: int, mode: str) -> Tensor:
    if scale == 1:
        return z
    if mode == "nearest":
        # Replication, not F.interpolate(mode="nearest"): that computes floor(dst * (1 / scale)) with a float32
        # 1 / scale, which lands one pixel early for some scales (41, 47, 55, ...).
        return z.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return F.interpolate(z, scale_factor=scale, mode="bilinear", align_corners=False)


def _upsample_adjoint(g: Tensor, low: torch.Size, scale: int, mode: str) -> Tensor:
    """The adjoint of ``_upsample``: (B, N, H, W) -> (B, N, h, w)."""
    if scale == 1:
        return g
    B, N, h, w = low
    if mode == "nearest":
        return g.reshape(B, N, h, scale, w, scale).sum(dim=(3, 5))
    H, W = h * scale, w * scale
    return torch.ops.aten.upsample_bilinear2d_backward(g, [H, W], [B, N, h, w], False, float(scale), float(scale))


def blend_sources_weights(logits: Tensor, scale: int, mode: str, normalize: str) -> Tensor:
    """(B, N, h, w) logits -> (B, N, h * scale, w * scale) per-pixel weights of the sources."""
    z = _upsample(logits.to(accumulate_dtype(logits.dtype)), scale, mode)
    return torch.softmax(z, dim=1) if normalize == "softmax" else z


def _output_format(x: Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def blend_sources_forward(x: Tensor, index: Tensor, logits: Tensor, scale: int, mode: str, normalize: str) -> Tensor:
    acc = accumulate_dtype(x.dtype)
    w = blend_sources_weights(logits, scale, mode, normalize).to(acc)
    xs = x.to(acc)
    out = torch.zeros_like(xs)
    for i in range(index.shape[0]):  # in source order: the order every backend sums in
        out = out + w[:, i : i + 1] * xs[index[i].long()]
    return out.to(x.dtype).contiguous(memory_format=_output_format(x))


def blend_sources_backward(
    grad_out: Tensor, x: Tensor, index: Tensor, logits: Tensor, scale: int, mode: str, normalize: str
) -> tuple[Tensor, Tensor]:
    """d mixed -> (d x, d logits). Source j receives, from each row i, W[b, i] * g[b] for the one b with
    index[i, b] = j (a permutation: a gather, summed over i in order); the logits get the chain rule through
    the normalisation and the upsampling's adjoint. d logits is contiguous."""
    acc = accumulate_dtype(x.dtype)
    g = grad_out.to(acc)
    w = blend_sources_weights(logits, scale, mode, normalize)
    xs = x.to(acc)
    # d mixed / d W[b, i] = <g[b], x[index[i, b]]> over channels, per pixel
    dw = torch.stack([(g * xs[index[i].long()]).sum(dim=1) for i in range(index.shape[0])], dim=1).to(w.dtype)
    if normalize == "softmax":  # softmax's backward: W * (dW - sum_i W_i dW_i)
        dw = w * (dw - (w * dw).sum(dim=1, keepdim=True))
    grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    grad_logits.copy_(_upsample_adjoint(dw, logits.shape, scale, mode))
    wx = w.to(acc)
    grad_x = torch.zeros_like(g)
    for i in range(index.shape[0]):
        inverse = torch.empty_like(index[i], dtype=torch.long)
        inverse[index[i].long()] = torch.arange(index.shape[1], device=index.device)
        grad_x = grad_x + (wx[:, i : i + 1] * g)[inverse]
    grad_x = grad_x.to(grad_out.dtype).contiguous(memory_format=_output_format(grad_out))
    return grad_x, grad_logits
