"""R-Mix driven by cell saliency: ``rmix_cells`` thresholds a (B, p, p) saliency map that is already pooled
to the grid (a stored map, ``saliency_grid`` of some gradient) and mixes through the blend engine, so a
mixer can run R-Mix without this step's saliency pass.

It is a composition, not a kernel: the threshold runs in PyTorch on the small map (``reference.saliency_mask``,
R-Mix's step 3), the mix is ``blend_regions`` on ``regions_from_mask`` (steps 4-5) on the backend asked for,
with its autograd. Given ``saliency_grid(grad, p)`` (or the unnormalised ``reference.cell_saliency(grad, p)``:
the percentile mask does not change when a sample's map is scaled), it gives ``rmix(x, grad, grid=p)``'s
mask, output and ``lam_eff``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rmix_fast import reference
from rmix_fast.ops._backends import resolve_backend
from rmix_fast.ops._checks import (
    as_level_tensor,
    check_float_tensor,
    check_image,
    check_level,
    check_perm,
    check_same_device,
    permutation_checks,
    run_content_checks,
    unit_interval_check,
)
from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops.blend_regions import blend_regions, regions_from_mask

__all__ = ["rmix_cells"]


def _check_cells(cells: object, x: Tensor) -> int:
    """cells: a (B, p, p) float map on x's device, p dividing H and W; returns p."""
    cells = check_float_tensor("cells", cells)
    B, _, H, W = x.shape
    if cells.dim() != 3 or cells.shape[1] != cells.shape[2] or cells.shape[1] == 0:
        raise ValueError(f"cells must be a square (B, p, p) map with p >= 1, got shape {tuple(cells.shape)}")
    if cells.shape[0] != B:
        raise ValueError(f"cells must have x's batch size {B}, got shape {tuple(cells.shape)}")
    p = cells.shape[1]
    if H % p or W % p:
        raise ValueError(f"cells' grid p={p} must divide both H={H} and W={W} of x (shape {tuple(x.shape)})")
    check_same_device("cells", cells, x.device)
    return p


def rmix_cells(
    x: Tensor,
    cells: Tensor,
    *,
    perm: Tensor,
    lam: float | Tensor,
    q: float | Tensor,
    backend: str = "auto",
    validate: bool = True,
    return_mask: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """R-Mix from cell saliency: ``rmix``'s threshold and blend, given each sample's p x p saliency map.

    Args:
        x: (B, C, H, W) images; float16, bfloat16, float32 or float64; any strides.
        cells: (B, p, p) cell saliency on x's device, any float dtype and strides, p dividing H and W (the
            grid is ``cells.shape[-1]``). Only the order of a sample's cells matters: scaling a sample's
            map does not change its mask. A sample whose map holds a non-finite value is all "top".
        perm: (B,) integer permutation of 0..B-1; sample b is mixed with sample ``perm[b]``.
        lam: mixing weight in [0, 1]: a Python float, a (B,) or a 0-d float tensor.
        q: percentile level in [0, 1] that splits "top" from "not top" cells: float, (B,) or 0-d tensor.
        backend: the blend's backend: "auto", "reference", "triton" or "cpp" (the threshold is PyTorch).
        validate: check that ``perm`` is a permutation and ``lam``/``q`` lie in [0, 1] (one host-device
            sync). Shape, dtype and device checks are always done and read no tensor values.
        return_mask: also return the (B, p, p) bool "top" mask.

    Returns:
        ``mixed`` (x's shape, dtype and memory format; differentiable w.r.t. ``x``), ``lam_eff`` ((B,)
        float32 weight of each sample's own label) and, with ``return_mask``, the mask: as ``rmix``.

    The threshold is ``torch.quantile``'s linear interpolation at ``q`` over a sample's cells, computed in
    float32 (float64 for float64 cells), as ``rmix`` computes it for a gradient of the cells' dtype.
    """
    x = check_image("x", x)
    p = _check_cells(cells, x)
    B = x.shape[0]
    check_perm(perm, B, x.device)
    check_level("lam", lam, B, x.device)
    check_level("q", q, B, x.device)
    name = resolve_backend(backend, x.device, None)  # the blend's: it has no grid bound
    if B == 0:
        mixed, lam_eff = x.clone(), x.new_empty((0,), dtype=torch.float32)
        mask = x.new_empty((0, p, p), dtype=torch.bool)
        return (mixed, lam_eff, mask) if return_mask else (mixed, lam_eff)
    saliency = cells.detach().to(accumulate_dtype(cells.dtype))
    lam_t = as_level_tensor(lam, B, accumulate_dtype(x.dtype), x.device)
    q_t = as_level_tensor(q, B, saliency.dtype, x.device)
    if validate:  # before perm indexes anything; the blend below then skips its own checks
        run_content_checks(
            [*permutation_checks(perm), unit_interval_check("lam", lam_t), unit_interval_check("q", q_t)]
        )
    mask = reference.saliency_mask(saliency, q_t)
    regions = regions_from_mask(mask, perm)
    mixed, lam_eff = blend_regions(x, perm=perm, lam=lam_t, regions=regions, backend=name, validate=False)
    return (mixed, lam_eff, mask) if return_mask else (mixed, lam_eff)
