"""``blend_sources`` transcribed from its definition in float64, independently of the reference: the
upsampling pixel by pixel (no ``F.interpolate``), the softmax as its formula, the mix sample by sample and
source by source. Its gradients are autograd's through this transcription.

    W = normalize(upsample(logits, scale, mode))      (B, N, H, W)
    mixed[b] = sum_i W[b, i] * x[index[i, b]]

* bilinear (``align_corners=False``): destination pixel d reads source coordinate c = (d + 0.5) / scale - 0.5,
  clamped at 0; its neighbours floor(c) and floor(c) + 1 are clamped at the last pixel; the weights are
  1 - (c - floor(c)) and c - floor(c), per axis.
* nearest: destination pixel d reads source pixel floor(d / scale).
* softmax over the N sources at each pixel; "none" leaves the upsampled values as the weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["transcribed_blend", "transcribed_grads", "transcribed_weights"]


def _bilinear_source(dst: int, scale: int, size: int) -> tuple[int, int, float]:
    """The two source pixels of destination pixel ``dst`` along one axis, and the second one's weight."""
    c = max((dst + 0.5) / scale - 0.5, 0.0)
    lo = min(math.floor(c), size - 1)
    hi = min(lo + 1, size - 1)
    return lo, hi, c - lo


def _upsample(z: Tensor, scale: int, mode: str) -> Tensor:
    """(B, N, h, w) -> (B, N, h * scale, w * scale), one destination pixel at a time (all B and N at once)."""
    h, w = z.shape[2:]
    rows = []
    for y in range(h * scale):
        row = []
        for x in range(w * scale):
            if mode == "nearest":
                row.append(z[:, :, y // scale, x // scale])
            elif mode == "bilinear":
                y0, y1, fy = _bilinear_source(y, scale, h)
                x0, x1, fx = _bilinear_source(x, scale, w)
                top = (1 - fx) * z[:, :, y0, x0] + fx * z[:, :, y0, x1]
                bottom = (1 - fx) * z[:, :, y1, x0] + fx * z[:, :, y1, x1]
                row.append((1 - fy) * top + fy * bottom)
            else:
                raise ValueError(mode)
        rows.append(torch.stack(row, dim=-1))
    return torch.stack(rows, dim=-2)


def transcribed_weights(logits: Tensor, scale: int, mode: str, normalize: str) -> Tensor:
    """(B, N, h, w) logits -> (B, N, H, W) float64 weights."""
    up = _upsample(logits.double(), scale, mode)
    if normalize == "none":
        return up
    if normalize != "softmax":
        raise ValueError(normalize)
    e = torch.exp(up - up.amax(dim=1, keepdim=True))  # shifted by the pixel's max: the same softmax, no overflow
    return e / e.sum(dim=1, keepdim=True)


def transcribed_blend(x: Tensor, index: Tensor, logits: Tensor, scale: int, mode: str, normalize: str) -> Tensor:
    """The float64 (B, C, H, W) mix; differentiable w.r.t. float64 ``x`` and ``logits``."""
    weights = transcribed_weights(logits, scale, mode, normalize)
    xd = x.double()
    samples = []
    for b in range(x.shape[0]):
        total = torch.zeros_like(xd[b])
        for i in range(index.shape[0]):
            total = total + weights[b, i] * xd[int(index[i, b])]  # (H, W) weights over every channel
        samples.append(total)
    return torch.stack(samples)


def transcribed_grads(
    grad_out: Tensor, x: Tensor, index: Tensor, logits: Tensor, scale: int, mode: str, normalize: str
) -> tuple[Tensor, Tensor]:
    """(d x, d logits) in float64: autograd through the transcription, for the upstream gradient ``grad_out``."""
    xd = x.detach().double().requires_grad_(True)
    zd = logits.detach().double().requires_grad_(True)
    mixed = transcribed_blend(xd, index, zd, scale, mode, normalize)
    grad_x, grad_logits = torch.autograd.grad(mixed, (xd, zd), grad_out.double())
    return grad_x, grad_logits
