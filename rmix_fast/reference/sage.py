"""SAGE's reference (Ma et al., BMVC 2022): smoothed-saliency mixing after a search over integer shifts of
the partner. The ground truth of every backend, vectorised over the batch (the candidates in chunks, so
memory stays bounded at any resolution).

Per sample b with partner perm[b], scale lam_b and candidate shifts D (K x 2, (dy, dx)):

1. s = mean_c |grad|; s~ = a separable Gaussian blur of s (``blur_weights``; rows first, then columns;
   reflect padding). A sample whose s~ sums to 0 or holds a non-finite value gets s~ = 1 everywhere.
2. a = max(lam, 1e-12) * s~[b] / sum s~[b]; c = max(1 - lam, 1e-12) * s~[perm b] / sum s~[perm b].
3. For each d: c_d(p) = c(p + d) inside the image, else 0; M_d = a / max(a + c_d, 1e-16);
   score(d) = sum_p a * M_d + c_d * (1 - M_d). d* = the first candidate with the largest score.
4. M = M_{d*}; mixed(p) = M(p) x[b](p) + (1 - M(p)) x[perm b](p + d*) (0 outside); lam_eff = mean_p M.

Saliency, scores and M are computed in the accumulate dtype of ``grad`` (float32, float64 for float64), the
blend in that of ``x``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rmix_fast.ops._dtypes import accumulate_dtype

__all__ = [
    "blur_weights",
    "reflect_index",
    "sage_backward",
    "sage_forward",
    "sage_saliency",
    "sage_scores",
    "shift_map",
]

# Candidates per chunk of the search: bounds its temporaries to about this many elements.
_CHUNK_ELEMENTS = 1 << 24


def blur_weights(kernel_size: int, sigma: float, dtype: torch.dtype) -> Tensor:
    """torchvision's ``GaussianBlur`` kernel: exp(-t^2 / (2 sigma^2)) for t in -(k//2)..k//2, normalised;
    computed in float64, then rounded to ``dtype`` (every backend uses these values)."""
    t = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return (w / w.sum()).to(dtype)


def reflect_index(i: Tensor, n: int) -> Tensor:
    """Index ``i`` (any integer, possibly outside [0, n)) reflected into [0, n) without repeating the edge
    (``F.pad(mode="reflect")``), repeatedly for offsets beyond one reflection; n = 1 maps everything to 0."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i < n, i, period - i)


def _blur_1d(s: Tensor, weights: Tensor, dim: int) -> Tensor:
    n, half = s.shape[dim], (weights.numel() - 1) // 2
    out = torch.zeros_like(s)
    for k in range(weights.numel()):  # tap by tap in index order: the order every backend sums in
        idx = reflect_index(torch.arange(n, device=s.device) + (k - half), n)
        out = out + weights[k] * s.index_select(dim, idx)
    return out


def sage_saliency(grad: Tensor, sigma: float = 1.0, kernel_size: int = 5) -> Tensor:
    """(B, C, H, W) gradient -> (B, H, W) smoothed saliency s~ (step 1, with its fallback)."""
    acc = accumulate_dtype(grad.dtype)
    s = grad.to(acc).abs().mean(dim=1)
    w = blur_weights(kernel_size, sigma, acc).to(grad.device)
    s = _blur_1d(_blur_1d(s, w, 2), w, 1)  # along each row (W), then along each column (H)
    total = s.sum(dim=(1, 2), keepdim=True)
    usable = torch.isfinite(total) & (total > 0)
    return torch.where(usable, s, torch.ones_like(s))


def shift_map(m: Tensor, offsets: Tensor) -> Tensor:
    """(B, H, W) maps, (K, 2) shifts (dy, dx) -> (B, K, H, W): out[b, k](p) = m[b](p + d_k), 0 outside."""
    H, W = m.shape[1:]
    padded = F.pad(m, (W - 1, W - 1, H - 1, H - 1))
    dy, dx = offsets[:, 0].to(m.device), offsets[:, 1].to(m.device)
    rows = torch.arange(H, device=m.device)[None, :] + dy[:, None] + (H - 1)  # (K, H)
    cols = torch.arange(W, device=m.device)[None, :] + dx[:, None] + (W - 1)  # (K, W)
    return padded[:, rows[:, :, None], cols[:, None, :]]


def _scaled(s: Tensor, scale: Tensor) -> Tensor:
    return scale[:, None, None] * (s / s.sum(dim=(1, 2), keepdim=True))


def _own_and_partner(grad: Tensor, perm: Tensor, lam: Tensor, sigma: float, kernel_size: int) -> tuple[Tensor, Tensor]:
    s = sage_saliency(grad, sigma, kernel_size)
    lam = lam.to(s.dtype)
    a = _scaled(s, lam.clamp_min(1e-12))
    c = _scaled(s[perm.long()], (1 - lam).clamp_min(1e-12))
    return a, c


def sage_scores(a: Tensor, c: Tensor, offsets: Tensor) -> Tensor:
    """(B, K) score of every candidate shift: sum_p a M_d + c_d (1 - M_d), M_d = a / max(a + c_d, 1e-16)."""
    B, H, W = a.shape
    K = offsets.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, B * H * W))
    scores = []
    for start in range(0, K, chunk):
        c_d = shift_map(c, offsets[start : start + chunk])
        m = a[:, None] / (a[:, None] + c_d).clamp_min(1e-16)
        scores.append((a[:, None] * m + c_d * (1 - m)).sum(dim=(2, 3)))
    return torch.cat(scores, dim=1)


def sage_forward(
    x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, offsets: Tensor, sigma: float, kernel_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (mixed like x, lam_eff (B,) float32, shift (B, 2) int64 = d*, weight (B, H, W) = M in the
    saliency's dtype, which the backward takes)."""
    B = x.shape[0]
    a, c = _own_and_partner(grad, perm, lam, sigma, kernel_size)
    best = sage_scores(a, c, offsets).argmax(dim=1)  # the first of equal maxima
    shift = offsets.to(device=x.device, dtype=torch.int64)[best]
    c_best = shift_map(c, shift)[torch.arange(B, device=x.device), torch.arange(B, device=x.device)]
    weight = a / (a + c_best).clamp_min(1e-16)
    acc = accumulate_dtype(x.dtype)
    own = x.to(acc)
    partner = _shift_images(own[perm.long()], shift)
    m = weight.to(acc)[:, None]
    mixed = (m * own + (1 - m) * partner).to(x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        mixed = mixed.contiguous(memory_format=torch.channels_last)
    else:
        mixed = mixed.contiguous()
    lam_eff = weight.mean(dim=(1, 2)).to(torch.float32)
    return mixed, lam_eff, shift, weight


def _shift_images(x: Tensor, shift: Tensor) -> Tensor:
    """(B, C, H, W) images, (B, 2) shifts -> out[b](p) = x[b](p + shift[b]), 0 outside."""
    B, _, H, W = x.shape
    rows = torch.arange(H, device=x.device)[None, :] + shift[:, 0:1]  # (B, H)
    cols = torch.arange(W, device=x.device)[None, :] + shift[:, 1:2]  # (B, W)
    inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
    b = torch.arange(B, device=x.device)[:, None, None]
    out = x[b, :, rows.clamp(0, H - 1)[:, :, None], cols.clamp(0, W - 1)[:, None, :]]  # (B, H, W, C)
    # where, not a product: a non-finite edge pixel must not leak into the zeros outside
    return torch.where(inside[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device)).permute(0, 3, 1, 2)


def sage_backward(grad_out: Tensor, weight: Tensor, perm: Tensor, shift: Tensor) -> Tensor:
    """d mixed -> d x: x[b] gets M g_b; x[perm b] gets (1 - M) g_b at p + d*_b, i.e. sample j = perm[b]
    gets the shift by -d*_b of (1 - M_b) g_b (a permutation and a translation: no two terms collide)."""
    acc = accumulate_dtype(grad_out.dtype)
    g = grad_out.to(acc)
    m = weight.to(acc)[:, None]
    to_partner = _shift_images((1 - m) * g, -shift)
    inverse = torch.empty_like(perm, dtype=torch.long)
    inverse[perm.long()] = torch.arange(perm.numel(), device=perm.device)
    grad_x = (m * g + to_partner[inverse]).to(grad_out.dtype)
    if grad_out.is_contiguous(memory_format=torch.channels_last) and not grad_out.is_contiguous():
        return grad_x.contiguous(memory_format=torch.channels_last)
    return grad_x.contiguous()
