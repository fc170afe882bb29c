"""Pure-PyTorch reference of the R-Mix op: the ground truth for tests and the fallback backend.

Every step is vectorised over the batch and follows the normative semantics in the README:

1. ``s[b,h,w]   = sqrt(mean_c grad[b,c,h,w]**2)``                      (channel L2 saliency)
2. ``S[b,i,j]   = mean of s over cell (i, j)``                           (p x p grid)
3. ``t[b]       = torch.quantile(S[b].flatten(), q[b])`` (linear); ``m = S >= t``;
   all True if S[b] holds a non-finite value
4. ``mixed      = lam*x + (1-lam)*x[perm]`` (as ``lerp(x[perm], x, lam)``) where ``m == m[perm]``,
   else ``x`` where ``m``, else ``x[perm]``
5. ``lam_eff[b] = (count(inter[b]) * lam[b] + count(m[b] & ~m[perm[b]])) / p**2``

Steps 4-5 are the blend engine (``blend_regions``) on the codes ``regions_from_mask(m, perm)``.
Saliency runs in float32 (float64 for float64 grads).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.reference.blend_regions import blend_regions_backward, blend_regions_forward, regions_from_mask

__all__ = ["cell_saliency", "percentile_threshold", "rmix_backward", "rmix_forward", "saliency_mask"]


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


def rmix_forward(
    x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, q: Tensor, grid: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The whole op: (mixed, lam_eff, mask). Inputs are assumed validated (see ``rmix_fast.rmix``)."""
    mask = saliency_mask(cell_saliency(grad, grid), q)
    mixed, lam_eff = blend_regions_forward(x, regions_from_mask(mask, perm), perm, lam)
    return mixed, lam_eff, mask


def rmix_backward(grad_out: Tensor, mask: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient of ``rmix_forward``'s ``mixed`` w.r.t. ``x``: the blend's, on the mask's codes."""
    return blend_regions_backward(grad_out, regions_from_mask(mask, perm), perm, lam)
