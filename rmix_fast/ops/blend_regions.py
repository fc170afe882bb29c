"""The blend engine: ``blend_regions`` mixes each image with a partner cell by cell as a region code map
says. Mixup (one ``BLEND`` cell), CutMix (a ``PARTNER`` box) and R-Mix (``regions_from_mask``) all end
here, on every backend."""

from __future__ import annotations

import torch
from torch import Tensor

from rmix_fast import reference
from rmix_fast.ops._backends import resolve_backend
from rmix_fast.ops._checks import (
    as_level_tensor,
    check_image,
    check_level,
    check_perm,
    check_regions,
    permutation_checks,
    region_code_check,
    run_content_checks,
    unit_interval_check,
)
from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops._region_codes import BLEND, OWN, PARTNER
from rmix_fast.ops._registry import OpSpec, register_op

__all__ = ["BLEND", "BLEND_REGIONS", "OWN", "PARTNER", "blend_regions", "regions_from_mask"]


def _fake(x: Tensor, regions: Tensor, perm: Tensor, lam: Tensor, validate: bool) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), x.new_empty((x.shape[0],), dtype=torch.float32)


def _check_values(x: Tensor, regions: Tensor, perm: Tensor, lam: Tensor) -> None:
    run_content_checks([*permutation_checks(perm), unit_interval_check("lam", lam), region_code_check(regions)])


BLEND_REGIONS = register_op(
    OpSpec(
        name="blend_regions",
        schema="(Tensor x, Tensor regions, Tensor perm, Tensor lam, bool validate) -> (Tensor, Tensor)",
        backward_schema="(Tensor grad_out, Tensor regions, Tensor perm, Tensor lam) -> Tensor",
        fake=_fake,
        save=lambda inputs, outputs: (inputs[1], inputs[2], inputs[3]),
        check_values=_check_values,
    )
)


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
    x = check_image("x", x)
    B = x.shape[0]
    check_perm(perm, B, x.device)
    check_level("lam", lam, B, x.device)
    check_regions(regions, x)
    name = resolve_backend(backend, x.device, None)
    if B == 0:
        return x.clone(), x.new_empty((0,), dtype=torch.float32)
    lam_t = as_level_tensor(lam, B, accumulate_dtype(x.dtype), x.device)
    return BLEND_REGIONS.forward[name](x, regions, perm, lam_t, validate)


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
