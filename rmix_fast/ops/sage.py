"""SAGE as one op: ``sage`` mixes each image with a partner through a soft per-pixel mask built from
smoothed input-gradient saliency, after searching a set of integer shifts of the partner for the one that
keeps the most saliency (Ma et al., BMVC 2022). The semantics are normative in ``rmix_fast.reference.sage``
and the README."""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from rmix_fast.ops._backends import resolve_backend
from rmix_fast.ops._checks import (
    ContentCheck,
    as_level_tensor,
    check_float_tensor,
    check_image,
    check_level,
    check_perm,
    check_positive_int,
    check_same_device,
    describe,
    is_integer_tensor,
    permutation_checks,
    run_content_checks,
    unit_interval_check,
)
from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops._registry import OpSpec, register_op

__all__ = ["SAGE", "sage"]


def _output_format(x: Tensor) -> torch.memory_format:
    """mixed is channels_last for a channels_last x, else contiguous (as every backend writes it)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _fake(x, grad, perm, lam, offsets, sigma, kernel_size, validate):
    B, _, H, W = x.shape
    return (
        torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_output_format(x)),
        x.new_empty((B,), dtype=torch.float32),
        x.new_empty((B, 2), dtype=torch.int64),
        x.new_empty((B, H, W), dtype=accumulate_dtype(grad.dtype)),
    )


def _offsets_check(offsets: Tensor, H: int, W: int) -> ContentCheck:
    dy, dx = offsets[:, 0], offsets[:, 1]
    ok = ((dy.abs() < H) & (dx.abs() < W)).all()

    def error() -> Exception:
        return ValueError(
            f"offsets must hold shifts (dy, dx) with |dy| < H={H} and |dx| < W={W}, got dy in "
            f"[{int(dy.min())}, {int(dy.max())}] and dx in [{int(dx.min())}, {int(dx.max())}]"
        )

    return ContentCheck(ok, error)


def _check_values(x, grad, perm, lam, offsets, sigma, kernel_size) -> None:
    H, W = x.shape[-2:]
    run_content_checks([*permutation_checks(perm), unit_interval_check("lam", lam), _offsets_check(offsets, H, W)])


SAGE = register_op(
    OpSpec(
        name="sage",
        schema="(Tensor x, Tensor grad, Tensor perm, Tensor lam, Tensor offsets, float sigma, int kernel_size,"
        " bool validate) -> (Tensor, Tensor, Tensor, Tensor)",
        backward_schema="(Tensor grad_out, Tensor weight, Tensor perm, Tensor shift) -> Tensor",
        fake=_fake,
        save=lambda inputs, outputs: (outputs[3], inputs[2], outputs[2]),
        check_values=_check_values,
    )
)


def _check_args(x, grad, perm, lam, offsets, sigma, kernel_size) -> tuple[float, int]:
    x = check_image("x", x)
    grad = check_float_tensor("grad", grad)
    if grad.shape != x.shape:
        raise ValueError(f"grad must have x's shape {tuple(x.shape)}, got {tuple(grad.shape)}")
    check_same_device("grad", grad, x.device)
    B = x.shape[0]
    check_perm(perm, B, x.device)
    check_level("lam", lam, B, x.device)
    if not isinstance(offsets, Tensor):
        raise TypeError(f"offsets must be an integer torch.Tensor of shape (K, 2), got {describe(offsets)}")
    if not is_integer_tensor(offsets):
        raise TypeError(f"offsets must be an integer tensor, got dtype {offsets.dtype}")
    if offsets.dim() != 2 or offsets.shape[1] != 2 or offsets.shape[0] < 1:
        raise ValueError(f"offsets must have shape (K, 2) with K >= 1, got {tuple(offsets.shape)}")
    check_same_device("offsets", offsets, x.device)
    if isinstance(sigma, bool) or not isinstance(sigma, Real) or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    k = check_positive_int("kernel_size", kernel_size)
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {k}")
    return float(sigma), k


def sage(
    x: Tensor,
    grad: Tensor,
    *,
    perm: Tensor,
    lam: float | Tensor,
    offsets: Tensor,
    sigma: float = 1.0,
    kernel_size: int = 5,
    backend: str = "auto",
    validate: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """SAGE: mix each image with the best shift of its partner, by smoothed saliency.

    Args:
        x: (B, C, H, W) images; float16, bfloat16, float32 or float64; any strides (H != W allowed).
        grad: (B, C, H, W) gradient of the loss w.r.t. ``x``, same device; any float dtype.
        perm: (B,) integer permutation of 0..B-1; sample b is mixed with sample ``perm[b]``.
        lam: saliency scale in [0, 1]: a Python float or a (B,) float tensor (SAGE's lambda').
        offsets: (K, 2) integer tensor of candidate shifts (dy, dx), |dy| < H and |dx| < W, shared by
            the batch; the first of equally good candidates wins.
        sigma, kernel_size: the Gaussian blur of the saliency (odd kernel size).
        backend: "auto" (fastest available for x's device), "reference", "triton" or "cpp".
        validate: check that ``perm`` is a permutation, ``lam`` lies in [0, 1] and ``offsets`` in range:
            one host-device sync per call; shape, dtype and device checks always run and cost none.

    Returns:
        ``mixed``: x's shape, dtype and memory format; differentiable w.r.t. ``x`` (both sources).
        ``lam_eff``: (B,) float32 mean of the mask: the own label's weight.
        ``shift``: (B, 2) int64, the chosen shift d* of each sample's partner.
    """
    sigma, k = _check_args(x, grad, perm, lam, offsets, sigma, kernel_size)
    name = resolve_backend(backend, x.device, None)
    if name == "cpp" and x.device.type != "cpu":
        raise ValueError(f"backend 'cpp' runs sage on the CPU only, x is on {x.device}; use 'triton' or 'auto'")
    B = x.shape[0]
    if B == 0:
        return x.clone(), x.new_empty((0,), dtype=torch.float32), x.new_empty((0, 2), dtype=torch.int64)
    lam_t = as_level_tensor(lam, B, accumulate_dtype(grad.dtype), x.device)
    mixed, lam_eff, shift, _ = SAGE.forward[name](x, grad, perm, lam_t, offsets, sigma, k, validate)
    return mixed, lam_eff, shift
