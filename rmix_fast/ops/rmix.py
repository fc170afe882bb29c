"""R-Mix as one op: ``rmix`` thresholds each sample's input-gradient saliency on a p x p grid and mixes it
with a partner through the blend engine; ``saliency_grid`` is the normalised cell saliency it thresholds."""

from __future__ import annotations

import torch
from torch import Tensor

from rmix_fast import reference
from rmix_fast.ops._backends import resolve_backend
from rmix_fast.ops._checks import (
    as_level_tensor,
    check_float_tensor,
    check_grid,
    check_image,
    check_level,
    check_perm,
    permutation_checks,
    run_content_checks,
    unit_interval_check,
)
from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops._registry import OpSpec, register_op

__all__ = ["RMIX", "rmix", "saliency_grid"]


def _fake(x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, q: Tensor, grid: int, validate: bool):
    B = x.shape[0]
    return (
        torch.empty_like(x),
        x.new_empty((B,), dtype=torch.float32),
        x.new_empty((B, grid, grid), dtype=torch.bool),
    )


def _check_values(x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, q: Tensor, grid: int) -> None:
    run_content_checks([*permutation_checks(perm), unit_interval_check("lam", lam), unit_interval_check("q", q)])


RMIX = register_op(
    OpSpec(
        name="rmix",
        schema="(Tensor x, Tensor grad, Tensor perm, Tensor lam, Tensor q, int grid, bool validate)"
        " -> (Tensor, Tensor, Tensor)",
        backward_schema="(Tensor grad_out, Tensor mask, Tensor perm, Tensor lam) -> Tensor",
        fake=_fake,
        save=lambda inputs, outputs: (outputs[2], inputs[2], inputs[3]),
        check_values=_check_values,
    )
)


def _check_args(x: object, grad: object, perm: object, lam: object, q: object, grid: object) -> int:
    """The checks that need no tensor contents; returns ``grid`` as a plain int."""
    x = check_image("x", x)
    grad = check_float_tensor("grad", grad)
    if grad.shape != x.shape:
        raise ValueError(f"grad must have x's shape {tuple(x.shape)}, got {tuple(grad.shape)}")
    if grad.device != x.device:
        raise ValueError(f"grad is on {grad.device} but x is on {x.device}; all tensors must share a device")
    B, _, H, W = x.shape
    check_perm(perm, B, x.device)
    check_level("lam", lam, B, x.device)
    check_level("q", q, B, x.device)
    return check_grid(grid, H, W, x.shape)


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
    p = _check_args(x, grad, perm, lam, q, grid)
    name = resolve_backend(backend, x.device, p)
    B = x.shape[0]
    if B == 0:
        mixed, lam_eff, mask = (
            x.clone(),
            x.new_empty((0,), dtype=torch.float32),
            x.new_empty((0, p, p), dtype=torch.bool),
        )
    else:
        lam_t = as_level_tensor(lam, B, accumulate_dtype(x.dtype), x.device)
        q_t = as_level_tensor(q, B, accumulate_dtype(grad.dtype), x.device)
        mixed, lam_eff, mask = RMIX.forward[name](x, grad, perm, lam_t, q_t, p, validate)
    return (mixed, lam_eff, mask) if return_mask else (mixed, lam_eff)


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
