"""Pure-PyTorch reference for the R-Mix mixing step: the ground truth for tests and the CPU fallback.

Every step is vectorised over the batch and follows the normative semantics in the README:

1. ``s[b,h,w]   = sqrt(mean_c grad[b,c,h,w]**2)``                      (channel L2 saliency)
2. ``S[b,i,j]   = mean of s over cell (i, j)``                           (p x p grid)
3. ``t[b]       = torch.quantile(S[b].flatten(), q[b])`` (linear); ``m = S >= t``;
   all True if S[b] holds a non-finite value
4. ``mixed      = lam*x + (1-lam)*x[perm]`` (as ``lerp(x[perm], x, lam)``) where ``m == m[perm]``,
   else ``x`` where ``m``, else ``x[perm]``
5. ``lam_eff[b] = (count(inter[b]) * lam[b] + count(m[b] & ~m[perm[b]])) / p**2``

Saliency runs in float32 (float64 for float64 grads); the blend in float32 (float64 for float64 images).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "accumulate_dtype",
    "blend",
    "blend_backward",
    "cell_saliency",
    "label_weight",
    "lerp",
    "percentile_threshold",
    "rmix_backward",
    "rmix_forward",
    "saliency_mask",
]


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision the op computes in for tensors of ``dtype``: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cell_saliency(grad: Tensor, grid: int) -> Tensor:
    """(B, C, H, W) gradient -> (B, p, p) mean channel-L2 saliency of each cell (steps 1-2)."""
    B, _, H, W = grad.shape
    s = grad.to(accumulate_dtype(grad.dtype)).square().mean(dim=1).sqrt()  # (B, H, W)
    return s.reshape(B, grid, H // grid, grid, W // grid).mean(dim=(2, 4))


def percentile_threshold(saliency: Tensor, q: Tensor) -> Tensor:
    """Per-sample ``torch.quantile(saliency[b].flatten(), q[b])`` with linear interpolation, in one pass.

    ``torch.quantile`` with a vector ``q`` would compute every level for every sample (O(B^2));
    this sorts each sample once and interpolates exactly as ``torch.quantile`` does:
    rank = q*(n-1), lerp between the values at floor(rank) and ceil(rank).
    """
    flat = saliency.flatten(1)
    n = flat.shape[1]
    ordered = flat.sort(dim=1).values
    rank = q.to(flat.dtype) * (n - 1)
    below = rank.floor()
    weight = (rank - below).unsqueeze(1)
    lo = ordered.gather(1, below.long().unsqueeze(1))
    hi = ordered.gather(1, rank.ceil().long().unsqueeze(1))
    return torch.lerp(lo, hi, weight).squeeze(1)


def saliency_mask(saliency: Tensor, q: Tensor) -> Tensor:
    """(B, p, p) cell saliency and (B,) levels -> (B, p, p) bool "top" mask (step 3).

    A sample whose saliency holds any non-finite value gets an all-True mask (no usable saliency).
    """
    flat = saliency.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    usable = torch.where(finite.unsqueeze(1), flat, torch.zeros_like(flat))
    t = percentile_threshold(usable, q)
    mask = (usable >= t.unsqueeze(1)) | ~finite.unsqueeze(1)
    return mask.view_as(saliency)


def lerp(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """``weight*end + (1-weight)*start`` by torch.lerp's two-sided formula: exact at weight 0 and 1 and
    where start == end. Spelled out (no FMA) so every backend can reproduce it operation for operation."""
    diff = end - start
    return torch.where(weight < 0.5, start + weight * diff, end - diff * (1 - weight))


def _to_pixels(cells: Tensor, H: int, W: int) -> Tensor:
    """(B, p, p) -> (B, 1, H, W) by replicating each cell over its (H/p) x (W/p) pixels."""
    p = cells.shape[1]
    return cells.repeat_interleave(H // p, dim=1).repeat_interleave(W // p, dim=2).unsqueeze(1)


def label_weight(mask: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """(B,) float32 weight of each sample's own label (step 5), computed in float64 then rounded."""
    partner = mask[perm]
    n_inter = (mask == partner).flatten(1).sum(dim=1, dtype=torch.float64)
    n_own = (mask & ~partner).flatten(1).sum(dim=1, dtype=torch.float64)
    cells = mask[0].numel()
    return ((n_inter * lam.to(torch.float64) + n_own) / cells).to(torch.float32)


def blend(x: Tensor, mask: Tensor, perm: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Mix ``x`` with ``x[perm]`` under a given (B, p, p) mask (steps 4-5) -> (mixed, lam_eff).

    Copies are selected, not multiplied, so a copied pixel is bit-exact even if the other image holds inf/NaN.
    """
    H, W = x.shape[-2:]
    cd = accumulate_dtype(x.dtype)
    partner_mask = mask[perm]
    inter = _to_pixels(mask == partner_mask, H, W)
    own_top = _to_pixels(mask, H, W)
    xa = x.to(cd)
    xb = x.index_select(0, perm).to(cd)
    lam_px = lam.to(cd).view(-1, 1, 1, 1)
    mixed = torch.where(inter, lerp(xb, xa, lam_px), torch.where(own_top, xa, xb))
    out = torch.empty_like(x)  # keeps x's memory format
    out.copy_(mixed)
    return out, label_weight(mask, perm, lam)


def blend_backward(grad_out: Tensor, mask: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient of ``blend`` w.r.t. x, with the forward's select semantics (a copy passes grad_out through,
    the unselected image gets exactly 0, never 0*inf).

    x[b] feeds mixed[b] (as "own") and mixed[src[b]] with perm[src[b]] == b (as "partner").
    """
    H, W = grad_out.shape[-2:]
    cd = accumulate_dtype(grad_out.dtype)
    src = torch.argsort(perm)  # inverse permutation
    inter = _to_pixels(mask == mask[perm], H, W)
    top = _to_pixels(mask, H, W)
    go = grad_out.to(cd)
    lam_px = lam.to(cd).view(-1, 1, 1, 1)
    zero = torch.zeros((), dtype=cd, device=go.device)
    own = torch.where(inter, lam_px * go, torch.where(top, go, zero))
    # In mixed[src[b]], x[b] is the partner: blended where that sample agrees with b, copied where only b is top.
    go_s, lam_s, inter_s = go.index_select(0, src), lam_px.index_select(0, src), inter.index_select(0, src)
    via = torch.where(inter_s, (1 - lam_s) * go_s, torch.where(top, go_s, zero))
    out = torch.empty_like(grad_out)
    out.copy_(own + via)
    return out


def rmix_forward(
    x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, q: Tensor, grid: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The whole op: (mixed, lam_eff, mask). Inputs are assumed validated (see ``rmix_fast.rmix``)."""
    mask = saliency_mask(cell_saliency(grad, grid), q)
    mixed, lam_eff = blend(x, mask, perm, lam)
    return mixed, lam_eff, mask


def rmix_backward(grad_out: Tensor, mask: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient of ``rmix_forward``'s ``mixed`` w.r.t. ``x``."""
    return blend_backward(grad_out, mask, perm, lam)
