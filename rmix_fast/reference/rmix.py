"""Pure-PyTorch reference for the R-Mix mixing step: the ground truth for tests and the CPU fallback.

Every step is vectorised over the batch and follows the normative semantics in the README:

1. ``s[b,h,w]   = sqrt(mean_c grad[b,c,h,w]**2)``                      (channel L2 saliency)
2. ``S[b,i,j]   = mean of s over cell (i, j)``                           (p x p grid)
3. ``t[b]       = torch.quantile(S[b].flatten(), q[b])`` (linear); ``m = S >= t``;
   all True if S[b] holds a non-finite value
4. ``mixed      = lam*x + (1-lam)*x[perm]`` (as ``lerp(x[perm], x, lam)``) where ``m == m[perm]``,
   else ``x`` where ``m``, else ``x[perm]``
5. ``lam_eff[b] = (count(inter[b]) * lam[b] + count(m[b] & ~m[perm[b]])) / p**2``

Steps 4-5 go through the region blend (``blend_regions``): the mask and perm become per-cell codes
(``BLEND``, ``OWN``, ``PARTNER``), the same engine Mixup (all ``BLEND``) and CutMix (a ``PARTNER`` box)
use. Saliency runs in float32 (float64 for float64 grads); the blend in float32 (float64 for float64 images).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "BLEND",
    "OWN",
    "PARTNER",
    "accumulate_dtype",
    "blend",
    "blend_backward",
    "blend_regions",
    "blend_regions_backward",
    "cell_saliency",
    "label_weight",
    "lerp",
    "percentile_threshold",
    "region_label_weight",
    "regions_from_mask",
    "rmix_backward",
    "rmix_forward",
    "saliency_mask",
]

# Region codes: what one cell of mixed[b] is made of.
BLEND, OWN, PARTNER = 0, 1, 2


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
    """(B, gh, gw) -> (B, 1, H, W) by replicating each cell over its (H/gh) x (W/gw) pixels."""
    gh, gw = cells.shape[1:]
    return cells.repeat_interleave(H // gh, dim=1).repeat_interleave(W // gw, dim=2).unsqueeze(1)


def regions_from_mask(mask: Tensor, perm: Tensor) -> Tensor:
    """(B, p, p) top mask -> (B, p, p) int8 region codes of R-Mix (step 4): ``BLEND`` where a sample and
    its partner ``perm[b]`` agree, ``OWN`` where only the sample is top, ``PARTNER`` where only the partner is."""
    partner = mask.index_select(0, perm.long())
    own = torch.full(mask.shape, OWN, dtype=torch.int8, device=mask.device)
    other = torch.full_like(own, PARTNER)
    return torch.where(mask == partner, torch.full_like(own, BLEND), torch.where(mask, own, other))


def region_label_weight(regions: Tensor, lam: Tensor) -> Tensor:
    """(B,) float32 weight of each sample's own label: (blended cells * lam + own cells) / cells (step 5),
    computed in float64 then rounded."""
    flat = regions.flatten(1)
    n_blend = (flat == BLEND).sum(dim=1, dtype=torch.float64)
    n_own = (flat == OWN).sum(dim=1, dtype=torch.float64)
    return ((n_blend * lam.to(torch.float64) + n_own) / flat.shape[1]).to(torch.float32)


def blend_regions(x: Tensor, regions: Tensor, perm: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Mix ``x`` with ``x[perm]`` cell by cell as ``regions`` (B, gh, gw) says -> (mixed, lam_eff).

    ``BLEND`` (0): ``lerp(x[perm], x, lam)``; ``OWN`` (1): x; any other code: ``x[perm]``. Copies are
    selected, not multiplied, so a copied pixel is bit-exact even if the other image holds inf/NaN.
    This is the one blend of the package: R-Mix, Mixup and CutMix all end here.
    """
    H, W = x.shape[-2:]
    cd = accumulate_dtype(x.dtype)
    blended = _to_pixels(regions == BLEND, H, W)
    own = _to_pixels(regions == OWN, H, W)
    xa = x.to(cd)
    xb = x.index_select(0, perm.long()).to(cd)
    lam_px = lam.to(cd).view(-1, 1, 1, 1)
    mixed = torch.where(blended, lerp(xb, xa, lam_px), torch.where(own, xa, xb))
    out = torch.empty_like(x)  # keeps x's memory format
    out.copy_(mixed)
    return out, region_label_weight(regions, lam)


def blend_regions_backward(grad_out: Tensor, regions: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient of ``blend_regions`` w.r.t. x, with the forward's select semantics (a copy passes grad_out
    through, the unselected image gets exactly 0, never 0*inf).

    x[b] feeds mixed[b] (as "own") and mixed[s] with perm[s] == b (as "partner").
    """
    H, W = grad_out.shape[-2:]
    cd = accumulate_dtype(grad_out.dtype)
    src = torch.argsort(perm.long())  # inverse permutation
    blended = _to_pixels(regions == BLEND, H, W)
    own = _to_pixels(regions == OWN, H, W)
    taken = ~(blended | own)  # cells where a sample takes its partner's pixels
    go = grad_out.to(cd)
    lam_px = lam.to(cd).view(-1, 1, 1, 1)
    zero = torch.zeros((), dtype=cd, device=go.device)
    own_term = torch.where(blended, lam_px * go, torch.where(own, go, zero))
    go_s, lam_s = go.index_select(0, src), lam_px.index_select(0, src)
    via = torch.where(
        blended.index_select(0, src), (1 - lam_s) * go_s, torch.where(taken.index_select(0, src), go_s, zero)
    )
    out = torch.empty_like(grad_out)
    out.copy_(own_term + via)
    return out


def label_weight(mask: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """(B,) float32 weight of each sample's own label under an R-Mix top mask (step 5)."""
    return region_label_weight(regions_from_mask(mask, perm), lam)


def blend(x: Tensor, mask: Tensor, perm: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Mix ``x`` with ``x[perm]`` under a given (B, p, p) top mask (steps 4-5) -> (mixed, lam_eff)."""
    return blend_regions(x, regions_from_mask(mask, perm), perm, lam)


def blend_backward(grad_out: Tensor, mask: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient of ``blend`` w.r.t. x."""
    return blend_regions_backward(grad_out, regions_from_mask(mask, perm), perm, lam)


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
