"""Public functional API: ``rmix`` (the R-Mix op), ``blend_regions`` (the blend engine behind it, Mixup and
CutMix), ``regions_from_mask`` and ``saliency_grid``."""

from __future__ import annotations

import torch
from torch import Tensor

from rmix_fast import reference
from rmix_fast._backends import resolve_backend
from rmix_fast._ops import OPS, REGION_OPS
from rmix_fast._validation import as_level_tensor, check_regions_static, check_static

__all__ = ["BLEND", "OWN", "PARTNER", "blend_regions", "regions_from_mask", "rmix", "saliency_grid"]

BLEND, OWN, PARTNER = reference.BLEND, reference.OWN, reference.PARTNER


def rmix(
    x: Tensor,
    grad: Tensor,
    *,
    perm: Tensor,
    lam: float | Tensor,
    q: float | Tensor,
    grid: int,
    backend: str = "auto",
    validate: bool = True,
    return_mask: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """R-Mix: mix each image with a partner, guided by thresholded input-gradient saliency.

    Args:
        x: (B, C, H, W) images; float16, bfloat16, float32 or float64; any strides.
        grad: (B, C, H, W) gradient of the loss w.r.t. ``x``, same device; any float dtype.
        perm: (B,) integer permutation of 0..B-1; sample b is mixed with sample ``perm[b]``.
        lam: mixing weight in [0, 1]: a Python float or a (B,) float tensor.
        q: percentile level in [0, 1] that splits "top" from "not top" cells: float or (B,) tensor.
        grid: p >= 1, dividing H and W: the image is cut into p x p cells of (H/p) x (W/p) pixels.
        backend: "auto" (fastest available for x's device), "reference", "triton" or "cpp".
        validate: check that ``perm`` is a permutation and ``lam``/``q`` lie in [0, 1]. Costs one
            host-device sync per call; shape, dtype and device checks are always done and cost none.
        return_mask: also return the (B, p, p) bool "top" mask.

    Returns:
        ``mixed``: x's shape, dtype and memory format; differentiable w.r.t. ``x``.
        ``lam_eff``: (B,) float32 weight of each sample's own label:
        ``y_soft = lam_eff[:, None] * y + (1 - lam_eff[:, None]) * y[perm]``.
        ``mask`` (only with ``return_mask``): (B, p, p) bool, True where a cell is "top".

    Cells where both samples agree (both top or both not) are blended ``lam*x + (1-lam)*x[perm]``;
    where they disagree the top one is copied. See the README for the exact semantics.
    """
    p = check_static(x, grad, perm, lam, q, grid)
    name = resolve_backend(backend, x.device, p)
    B = x.shape[0]
    if B == 0:
        mixed, lam_eff, mask = (
            x.clone(),
            x.new_empty((0,), dtype=torch.float32),
            x.new_empty((0, p, p), dtype=torch.bool),
        )
    else:
        lam_t = as_level_tensor(lam, B, reference.accumulate_dtype(x.dtype), x.device)
        q_t = as_level_tensor(q, B, reference.accumulate_dtype(grad.dtype), x.device)
        mixed, lam_eff, mask = OPS[name].forward(x, grad, perm, lam_t, q_t, p, validate)
    return (mixed, lam_eff, mask) if return_mask else (mixed, lam_eff)


def blend_regions(
    x: Tensor,
    *,
    perm: Tensor,
    lam: float | Tensor,
    regions: Tensor,
    backend: str = "auto",
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """Mix each image with a partner cell by cell, as a region code map says: the blend engine of R-Mix.

    Mixup is ``regions`` all ``BLEND`` on a 1x1 grid; CutMix is ``PARTNER`` inside the box and ``OWN``
    outside; R-Mix's cells come from ``regions_from_mask``. The same kernels run all three.

    Args:
        x: (B, C, H, W) images; float16, bfloat16, float32 or float64; any strides.
        perm: (B,) integer permutation of 0..B-1; sample b is mixed with sample ``perm[b]``.
        lam: blend weight in [0, 1] of ``x[b]`` in ``BLEND`` cells: a Python float or a (B,) float tensor.
        regions: (B, gh, gw) integer codes, gh dividing H and gw dividing W (need not be square): cell
            (i, j) covers rows [i*H/gh, (i+1)*H/gh) and columns [j*W/gw, (j+1)*W/gw) of ``mixed[b]``.
            ``BLEND`` (0): ``lam*x[b] + (1-lam)*x[perm[b]]``; ``OWN`` (1): ``x[b]``; ``PARTNER`` (2): ``x[perm[b]]``.
        backend: "auto" (fastest available for x's device), "reference", "triton" or "cpp".
        validate: check that ``perm`` is a permutation, ``lam`` lies in [0, 1] and every code is 0, 1 or 2
            (one host-device sync). Without it, codes other than 0 and 1 mean ``PARTNER``.

    Returns:
        ``mixed``: x's shape, dtype and memory format; differentiable w.r.t. ``x``.
        ``lam_eff``: (B,) float32 weight of each sample's own label, ``(blend cells * lam + own cells) / cells``.
    """
    check_regions_static(x, perm, lam, regions)
    name = resolve_backend(backend, x.device, None)
    B = x.shape[0]
    if B == 0:
        return x.clone(), x.new_empty((0,), dtype=torch.float32)
    lam_t = as_level_tensor(lam, B, reference.accumulate_dtype(x.dtype), x.device)
    return REGION_OPS[name].forward(x, regions, perm, lam_t, validate)


def regions_from_mask(mask: Tensor, perm: Tensor) -> Tensor:
    """R-Mix's cell modes: (B, p, p) bool top mask and (B,) perm -> (B, p, p) int8 region codes.

    ``BLEND`` where a sample and its partner ``perm[b]`` agree (both top or both not), ``OWN`` where only
    the sample is top, ``PARTNER`` where only the partner is. ``blend_regions(x, perm=perm, lam=lam,
    regions=regions_from_mask(mask, perm))`` equals ``rmix``'s output for that mask.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 3:
        raise TypeError(f"mask must be a (B, p, p) bool tensor, got {mask!r:.80}")
    B = mask.shape[0]
    if not isinstance(perm, Tensor) or perm.shape != (B,) or perm.is_floating_point() or perm.dtype == torch.bool:
        raise ValueError(f"perm must be a ({B},) integer tensor matching mask's batch, got {perm!r:.80}")
    return reference.regions_from_mask(mask, perm.to(mask.device))


def saliency_grid(grad: Tensor, grid: int, *, normalize: bool = True) -> Tensor:
    """(B, C, H, W) gradient -> (B, p, p) cell saliency (mean channel-L2 norm of ``grad`` per cell).

    With ``normalize`` each sample's grid sums to 1, as in the paper (the mask is the same either
    way). A sample with zero or non-finite saliency gets the uniform grid 1/p**2.
    """
    if not isinstance(grad, Tensor) or grad.dim() != 4 or not grad.is_floating_point():
        raise TypeError(f"grad must be a 4-D float tensor (B, C, H, W), got {grad!r:.80}")
    H, W = grad.shape[-2:]
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1 or H % grid or W % grid:
        raise ValueError(f"grid must be an int >= 1 dividing H={H} and W={W}, got {grid!r}")
    cells = reference.cell_saliency(grad, grid)
    if not normalize:
        return cells
    total = cells.sum(dim=(1, 2), keepdim=True)
    usable = torch.isfinite(total) & (total > 0)
    uniform = torch.full_like(cells, 1.0 / grid**2)
    return torch.where(usable, cells / torch.where(usable, total, 1), uniform)
