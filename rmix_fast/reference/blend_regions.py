"""Pure-PyTorch reference of the blend engine: the ground truth for tests and the fallback backend.

Per cell of a (gh, gw) region map, ``mixed[b]`` is ``lerp(x[perm[b]], x[b], lam[b])`` (``BLEND``),
``x[b]`` (``OWN``) or ``x[perm[b]]`` (``PARTNER``, and any other code); ``lam_eff[b] = (blended cells *
lam[b] + own cells) / cells``. Mixup is one ``BLEND`` cell, CutMix a ``PARTNER`` box, R-Mix's map comes
from its top mask (``regions_from_mask``). Vectorised over the batch; computes in float32 (float64 for
float64 images); ``lam_eff`` in float64, then rounded to float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops._region_codes import BLEND, OWN, PARTNER

__all__ = [
    "blend_regions_backward",
    "blend_regions_forward",
    "lerp",
    "region_label_weight",
    "regions_from_mask",
]


def lerp(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """``weight*end + (1-weight)*start`` by torch.lerp's two-sided formula: exact at weight 0 and 1 and
    where start == end. Spelled out (no FMA) so every backend can reproduce it operation for operation."""
    diff = end - start
    return torch.where(weight < 0.5, start + weight * diff, end - diff * (1 - weight))


def _cells_to_pixels(cells: Tensor, H: int, W: int) -> Tensor:
    """(B, gh, gw) -> (B, 1, H, W) by replicating each cell over its (H/gh) x (W/gw) pixels."""
    gh, gw = cells.shape[1:]
    return cells.repeat_interleave(H // gh, dim=1).repeat_interleave(W // gw, dim=2).unsqueeze(1)


def regions_from_mask(mask: Tensor, perm: Tensor) -> Tensor:
    """(B, p, p) top mask -> (B, p, p) int8 region codes of R-Mix: ``BLEND`` where a sample and its
    partner ``perm[b]`` agree, ``OWN`` where only the sample is top, ``PARTNER`` where only the partner is."""
    partner = mask.index_select(0, perm.long())
    own = torch.full(mask.shape, OWN, dtype=torch.int8, device=mask.device)
    other = torch.full_like(own, PARTNER)
    return torch.where(mask == partner, torch.full_like(own, BLEND), torch.where(mask, own, other))


def region_label_weight(regions: Tensor, lam: Tensor) -> Tensor:
    """(B,) float32 weight of each sample's own label: (blended cells * lam + own cells) / cells,
    computed in float64 then rounded."""
    flat = regions.flatten(1)
    n_blend = (flat == BLEND).sum(dim=1, dtype=torch.float64)
    n_own = (flat == OWN).sum(dim=1, dtype=torch.float64)
    return ((n_blend * lam.to(torch.float64) + n_own) / flat.shape[1]).to(torch.float32)


def blend_regions_forward(x: Tensor, regions: Tensor, perm: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Mix ``x`` with ``x[perm]`` cell by cell as ``regions`` (B, gh, gw) says -> (mixed, lam_eff).

    Copies are selected, not multiplied, so a copied pixel is bit-exact even if the other image holds
    inf/NaN. Inputs are assumed validated (see ``rmix_fast.blend_regions``).
    """
    H, W = x.shape[-2:]
    cd = accumulate_dtype(x.dtype)
    blended = _cells_to_pixels(regions == BLEND, H, W)
    own = _cells_to_pixels(regions == OWN, H, W)
    xa = x.to(cd)
    xb = x.index_select(0, perm.long()).to(cd)
    lam_px = lam.to(cd).view(-1, 1, 1, 1)
    mixed = torch.where(blended, lerp(xb, xa, lam_px), torch.where(own, xa, xb))
    out = torch.empty_like(x)  # keeps x's memory format
    out.copy_(mixed)
    return out, region_label_weight(regions, lam)


def blend_regions_backward(grad_out: Tensor, regions: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Gradient of ``blend_regions_forward``'s ``mixed`` w.r.t. x, with the forward's select semantics (a
    copy passes grad_out through, the unselected image gets exactly 0, never 0*inf).

    x[b] feeds mixed[b] (as "own") and mixed[s] with perm[s] == b (as "partner").
    """
    H, W = grad_out.shape[-2:]
    cd = accumulate_dtype(grad_out.dtype)
    src = torch.argsort(perm.long())  # inverse permutation
    blended = _cells_to_pixels(regions == BLEND, H, W)
    own = _cells_to_pixels(regions == OWN, H, W)
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
