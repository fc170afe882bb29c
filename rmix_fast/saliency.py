"""The saliency pass of R-Mix: the gradient of the loss w.r.t. the input images, and nothing else.

``input_gradient`` asks autograd for d loss / d x only (``torch.autograd.grad(..., inputs=x)``), so no
weight gradient is computed and no ``param.grad`` is touched. A ``DistributedDataParallel`` model is
run through its ``.module``: the pass needs no communication, and going around the wrapper keeps its
reducer out of it (no hooks fire, nothing is left pending for the real backward).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BATCHNORM_MODES", "input_gradient", "unwrap_model"]

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
) -> Tensor:
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

    Runs under the caller's autocast, if any. Gradients that still over- or underflow are harmless to
    the mixers: the op treats a sample with non-finite saliency as uniform (plain mixup), never NaN.

    Returns:
        (B, C, H, W) gradient in x's dtype, shape and memory format; detached. Parameters' ``.grad`` are untouched.
    """
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
    if loss_scale is None:
        loss_scale = FP16_LOSS_SCALE if _autocast_fp16(x.device.type) else 1.0
    if not loss_scale > 0:
        raise ValueError(f"loss_scale must be > 0, got {loss_scale!r}")

    H, W = x.shape[-2:]
    size = (max(1, round(H * resolution)), max(1, round(W * resolution)))
    net = unwrap_model(model)
    with torch.enable_grad(), _batchnorm_mode(net, batchnorm):
        seen = x.detach()
        if size != (H, W):
            seen = F.interpolate(seen, size=size, mode="bilinear", align_corners=False, antialias=True)
        seen.requires_grad_(True)
        loss = (loss_fn or _default_loss)(net(seen), y)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        (grad,) = torch.autograd.grad(loss * loss_scale if loss_scale != 1 else loss, seen)
    if loss_scale != 1:
        grad = grad / loss_scale
    if size != (H, W):
        grad = F.interpolate(grad, size=(H, W), mode="nearest").contiguous(memory_format=_format_of(x))
    return grad.to(x.dtype)


def _format_of(x: Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
