"""The saliency pass of R-Mix: the gradient of the loss w.r.t. the input images; and the clean pass that is
also a training signal.

``input_gradient`` asks autograd for d loss / d x only (``torch.autograd.grad(..., inputs=x)``), so no
weight gradient is computed and no ``param.grad`` is touched. A ``DistributedDataParallel`` model is
run through its ``.module``: the pass needs no communication, and going around the wrapper keeps its
reducer out of it (no hooks fire, nothing is left pending for the real backward).

``clean_loss_backward`` runs a full backward of the weighted clean loss instead: the parameter gradients
are kept for the step (the methods whose saliency pass is part of the update) and the input gradient comes
from the same backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BATCHNORM_MODES", "clean_loss_backward", "input_gradient", "unwrap_model"]

BATCHNORM_MODES = ("update", "keep", "eval")
# fp16 gradients of a mean loss underflow deep in a network; the mask is scale-invariant, so the loss
# is scaled up for the backward and the gradient scaled back (a power of two: both steps are exact).
FP16_LOSS_SCALE = 2.0**12


def _default_loss(logits: Tensor, y: Tensor) -> Tensor:
    if y.dim() == 1:
        return F.cross_entropy(logits, y)
    return torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1).mean()  # soft targets


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, or ``model`` itself. Passes that need no
    communication (saliency, attacks, CAMs) run around the wrapper: a backward through a DDP forward would
    leave its reducer waiting for gradients that never come."""
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


@contextmanager
def _batchnorm_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """ "update": as the paper (the model's mode as is; in train mode the clean batch updates running stats).
    "keep": the same forward, then every BatchNorm's running stats are put back.
    "eval": the whole model in eval mode for the pass (running stats normalise; nothing updates).
    The model's train/eval flags are restored afterwards in every mode."""
    modes = {m: m.training for m in model.modules()}
    saved: list[tuple[Tensor, Tensor]] = []
    if mode == "keep":
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats:
                saved += [(buf, buf.clone()) for buf in m.buffers()]
    if mode == "eval":
        model.eval()
    try:
        yield
    finally:
        for buf, value in saved:
            buf.copy_(value)
        for m, training in modes.items():
            m.training = training


def _autocast_fp16(device_type: str) -> bool:
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16


def input_gradient(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    batchnorm: str = "update",
    resolution: float = 1.0,
    loss_scale: float | None = None,
    return_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Gradient of the loss w.r.t. the input images: R-Mix's saliency signal.

    Args:
        model: maps (B, C, H, W) images to (B, K) logits; may be wrapped in DistributedDataParallel.
        x: (B, C, H, W) float images (any memory format; channels_last is kept).
        y: (B,) integer labels or (B, K) soft targets.
        loss_fn: ``loss_fn(logits, y) -> scalar``; default: mean cross-entropy (soft for (B, K) targets).
        batchnorm: "update" (the paper: the clean batch also updates running stats in train mode), "keep"
            (same forward, running stats restored afterwards) or "eval" (running stats normalise, nothing
            updates). The model's train/eval mode is restored afterwards.
        resolution: fraction of the image size the saliency pass sees, in (0, 1]. Below 1 the model runs on
            a bilinearly downsampled copy (a cheaper pass) and the gradient is mapped back to (H, W) by
            nearest-neighbour upsampling. The model must accept the smaller input.
        loss_scale: multiplies the loss for the backward and divides the gradient afterwards. Default: 1,
            or ``FP16_LOSS_SCALE`` under float16 autocast, where small gradients would underflow.
        return_logits: also return the pass's (B, K) logits, detached (RL-Mix's observation).

    Runs under the caller's autocast, if any. Gradients that still over- or underflow are harmless to
    the mixers: the op treats a sample with non-finite saliency as uniform (plain mixup), never NaN.

    Returns:
        (B, C, H, W) gradient in x's dtype, shape and memory format; detached. Parameters' ``.grad`` are untouched.
        With ``return_logits``: ``(grad, logits)``.
    """
    _check_pass(model, x, y, batchnorm, resolution)
    if loss_scale is None:
        loss_scale = FP16_LOSS_SCALE if _autocast_fp16(x.device.type) else 1.0
    if not loss_scale > 0:
        raise ValueError(f"loss_scale must be > 0, got {loss_scale!r}")

    net = unwrap_model(model)
    with torch.enable_grad(), _batchnorm_mode(net, batchnorm):
        seen = _pass_input(x, resolution).requires_grad_(True)
        logits = net(seen)
        loss = _scalar_loss(loss_fn, logits, y)
        (grad,) = torch.autograd.grad(loss * loss_scale if loss_scale != 1 else loss, seen)
    if loss_scale != 1:
        grad = grad / loss_scale
    grad = _as_input_gradient(grad, x)
    return (grad, logits.detach()) if return_logits else grad


def clean_loss_backward(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    weight: float,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    batchnorm: str = "update",
    resolution: float = 1.0,
    input_grad: bool = True,
    scale_loss: Callable[[Tensor], Tensor] | None = None,
    return_logits: bool = False,
) -> tuple[Tensor | None, Tensor] | tuple[Tensor | None, Tensor, Tensor]:
    """The clean batch as a training signal and, from the same backward, the saliency.

    One forward of the clean batch and one backward of ``weight * loss_fn(model(x), y)``: every parameter's
    gradient is accumulated into its ``.grad`` (so the step's own loss adds to it before the optimizer
    step: Co-Mixup's and PuzzleMix's ``clean_lam``, SAGE's ``1 - update_ratio``), and, with ``input_grad``,
    the gradient w.r.t. x comes out of the same backward: a saliency at no extra cost.

    Args:
        model, x, y, loss_fn, batchnorm, resolution: as ``input_gradient``. Under ``batchnorm="eval"`` the
            training signal is the loss of the model in eval mode.
        weight: the clean loss's weight, > 0.
        input_grad: also return d(loss)/dx (else x does not require grad, and None is returned).
        scale_loss: applied to ``weight * loss`` before the backward: a ``torch.amp.GradScaler``'s ``scale``,
            so that the parameter gradients carry the same scale as the step's own scaled loss. Default:
            none (under float16 autocast, pass the scaler's, or small gradients underflow).
        return_logits: also return the pass's (B, K) logits, detached.

    A ``DistributedDataParallel`` model is run through its ``.module``, as ``input_gradient`` does: the
    parameter gradients accumulate on this rank only, like gradients accumulated under ``no_sync()``, and
    the next backward through the wrapper averages the accumulated ``.grad`` over the ranks. So call this
    before the step's forward through the wrapper, not after its backward.

    Returns:
        ``(grad, loss)``: the input gradient (x's dtype, shape and memory format; detached) or None, and the
        detached, unweighted clean loss. The input gradient is that of the loss the backward ran,
        ``scale_loss(weight * loss)``: a positive multiple (weight, times a ``GradScaler``'s scale) of
        d loss / dx. The mixers use a saliency only up to a positive factor (R-Mix's mask is scale-invariant),
        so they build the same mixes from it as from ``input_gradient``'s, up to rounding. With
        ``return_logits``: ``(grad, loss, logits)``.
    """
    _check_pass(model, x, y, batchnorm, resolution)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < math.inf:
        raise ValueError(f"weight must be a finite number > 0, got {weight!r}")
    net = unwrap_model(model)
    with torch.enable_grad(), _batchnorm_mode(net, batchnorm):
        seen = _pass_input(x, resolution).requires_grad_(input_grad)
        logits = net(seen)
        loss = _scalar_loss(loss_fn, logits, y)
        total = loss * weight
        (scale_loss(total) if scale_loss is not None else total).backward()
    grad = _as_input_gradient(seen.grad, x) if input_grad else None
    return (grad, loss.detach(), logits.detach()) if return_logits else (grad, loss.detach())


def _check_pass(model: nn.Module, x: Tensor, y: Tensor, batchnorm: str, resolution: float) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a 4-D float tensor (B, C, H, W), got {x!r:.80}")
    if not isinstance(y, Tensor) or y.dim() not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be (B,) integer labels or (B, K) soft targets with B={x.shape[0]}, got {y!r:.80}")
    if y.dim() == 1 and (y.is_floating_point() or y.dtype == torch.bool):
        raise TypeError(f"y of shape (B,) must hold integer class labels, got dtype {y.dtype}")
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
    if not isinstance(resolution, int | float) or isinstance(resolution, bool) or not 0 < resolution <= 1:
        raise ValueError(f"resolution must be a number in (0, 1], got {resolution!r}")


def _pass_input(x: Tensor, resolution: float) -> Tensor:
    """The images the pass sees: a detached copy of x, bilinearly downsampled below resolution 1 (a new
    leaf either way, so its ``.grad`` is the pass's own)."""
    H, W = x.shape[-2:]
    size = (max(1, round(H * resolution)), max(1, round(W * resolution)))
    seen = x.detach()
    if size != (H, W):
        seen = F.interpolate(seen, size=size, mode="bilinear", align_corners=False, antialias=True)
    return seen


def _scalar_loss(loss_fn: Callable[[Tensor, Tensor], Tensor] | None, logits: Tensor, y: Tensor) -> Tensor:
    loss = (loss_fn or _default_loss)(logits, y)
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    return loss


def _as_input_gradient(grad: Tensor, x: Tensor) -> Tensor:
    """The pass's gradient as x's: mapped back to x's size (nearest) in x's memory format and dtype."""
    if grad.shape[-2:] != x.shape[-2:]:
        grad = F.interpolate(grad, size=tuple(x.shape[-2:]), mode="nearest").contiguous(memory_format=_format_of(x))
    return grad.to(x.dtype)


def _format_of(x: Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
