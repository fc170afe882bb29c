"""AdAutoMix's mixing as one op: ``blend_sources`` mixes N source images per pixel with weights upsampled
from low-resolution logits (Qin et al., ICLR 2024), neither the (B, N, H, W) weights nor the N products
ever materialised by the kernels."""

from __future__ import annotations

import torch
from torch import Tensor

from rmix_fast.ops._backends import resolve_backend
from rmix_fast.ops._checks import (
    check_float_tensor,
    check_image,
    check_positive_int,
    check_same_device,
    describe,
    finite_check,
    is_integer_tensor,
    permutation_rows_checks,
    run_content_checks,
)
from rmix_fast.ops._registry import OpSpec, register_op
from rmix_fast.reference.blend_sources import MODES, NORMALIZE, _output_format

__all__ = ["BLEND_SOURCES", "MODES", "NORMALIZE", "blend_sources"]


def _fake(x: Tensor, index: Tensor, logits: Tensor, scale: int, mode: str, normalize: str, validate: bool) -> Tensor:
    # the reference's layout: channels_last for a channels_last x, contiguous otherwise
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_output_format(x))


def _backward_fake(
    grad_out: Tensor, x: Tensor, index: Tensor, logits: Tensor, scale: int, mode: str, normalize: str
) -> tuple[Tensor, Tensor]:
    grad_x = torch.empty(
        grad_out.shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=_output_format(grad_out)
    )
    # d logits is contiguous whatever the logits' layout (a small map: every backend writes it densely)
    return grad_x, torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _check_values(x: Tensor, index: Tensor, logits: Tensor, scale: int, mode: str, normalize: str) -> None:
    run_content_checks([*permutation_rows_checks("index", index), finite_check("logits", logits)])


BLEND_SOURCES = register_op(
    OpSpec(
        name="blend_sources",
        schema="(Tensor x, Tensor index, Tensor logits, int scale, str mode, str normalize, bool validate) -> Tensor",
        backward_schema="(Tensor grad_out, Tensor x, Tensor index, Tensor logits, int scale, str mode, str normalize)"
        " -> (Tensor, Tensor)",
        fake=_fake,
        save=lambda inputs, outputs: tuple(inputs[:6]),  # x, index, logits, scale, mode, normalize
        check_values=_check_values,
        grad_inputs=(0, 2),  # x and logits
        backward_fake=_backward_fake,
    )
)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {choices}, got {describe(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_args(x: object, index: object, logits: object, scale: object, mode: object, normalize: object) -> int:
    """The checks that need no tensor contents (no host sync, they trace); returns ``scale`` as a plain int."""
    x = check_image("x", x)
    B, _, H, W = x.shape
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be an integer torch.Tensor, got {describe(index)}")
    if not is_integer_tensor(index):
        raise TypeError(f"index must be an integer tensor, got dtype {index.dtype}")
    if index.dim() != 2 or index.shape[0] < 1 or index.shape[1] != B:
        raise ValueError(
            f"index must have shape (N, {B}) with N >= 1 sources, one row per source over x's batch of {B}, "
            f"got shape {tuple(index.shape)}"
        )
    check_same_device("index", index, x.device)
    N = index.shape[0]
    logits = check_float_tensor("logits", logits)
    s = check_positive_int("scale", scale)
    if logits.dim() != 4 or logits.shape[:2] != (B, N) or logits.shape[2] * s != H or logits.shape[3] * s != W:
        raise ValueError(
            f"logits must have shape (B, N, h, w) = ({B}, {N}, H / scale, W / scale) for x of shape "
            f"{tuple(x.shape)}, index of shape {tuple(index.shape)} and scale={s}, got shape {tuple(logits.shape)}"
        )
    check_same_device("logits", logits, x.device)
    _check_choice("mode", mode, MODES)
    _check_choice("normalize", normalize, NORMALIZE)
    return s


def blend_sources(
    x: Tensor,
    *,
    index: Tensor,
    logits: Tensor,
    scale: int,
    mode: str = "bilinear",
    normalize: str = "softmax",
    backend: str = "auto",
    validate: bool = True,
) -> Tensor:
    """Mix N sources per pixel with weights upsampled from low-resolution logits: AdAutoMix's mixing step.

        W = normalize(upsample(logits, scale, mode))      (B, N, H, W)
        mixed[b] = sum_i W[b, i] * x[index[i, b]]

    With constant logits and ``normalize="none"`` it is the linear multi-source mix ``sum_i lam_i *
    x[index[i]]`` (AdAutoMix's x_lin); with N = 2 and equal logits it is Mixup at 0.5.

    Args:
        x: (B, C, H, W) images; float16, bfloat16, float32 or float64; any strides.
        index: (N, B) integer tensor, N >= 1, each row a permutation of 0..B-1: source i of sample b is
            ``x[index[i, b]]``.
        logits: (B, N, H / scale, W / scale) float tensor (any float dtype, same device): the low-resolution
            weight maps, one per source.
        scale: int >= 1, the upsampling factor from logits to x.
        mode: "bilinear" (``align_corners=False``: source coordinate ``(dst + 0.5) / scale - 0.5`` clamped
            at 0, neighbours clamped at the edge) or "nearest" (``floor(dst / scale)``).
        normalize: "softmax" (over the N sources, per pixel: the weights sum to 1) or "none" (the
            upsampled logits are the weights).
        backend: "auto" (fastest available for x's device), "reference", "triton" or "cpp".
        validate: check that every row of ``index`` is a permutation and that ``logits`` are finite (one
            host-device sync). Shape, dtype and device checks are always done and cost none.

    Returns:
        ``mixed``: x's shape and dtype, channels_last for a channels_last x (contiguous otherwise);
        differentiable w.r.t. ``x`` and ``logits``. Computed in float32 (float64 for float64 x).
    """
    s = _check_args(x, index, logits, scale, mode, normalize)
    name = resolve_backend(backend, x.device, None)
    if x.shape[0] == 0:  # no kernel launch; the reference's op keeps the result differentiable w.r.t. both
        name = "reference"
    return BLEND_SOURCES.forward[name](x, index, logits, s, mode, normalize, validate)
