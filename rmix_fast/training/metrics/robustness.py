"""Adversarial robustness: the fast gradient sign attack (FGSM, Goodfellow et al. 2015) and its error count."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmix_fast.saliency import unwrap_model

__all__ = ["fgsm", "fgsm_errors"]


def fgsm(model: nn.Module, x01: Tensor, labels: Tensor, eps: float = 8 / 255) -> Tensor:
    """Fast gradient sign attack: ``clamp(x + eps * sign(d CE / d x), 0, 1)``.

    Args:
        model: pixels in [0, 1] -> (B, K) logits. Its mode is left as is (put it in eval first, or BatchNorm
            layers update their running statistics).
        x01: (B, C, H, W) images in [0, 1].
        labels: (B,) int64.
        eps: step size on the [0, 1] pixel scale.

    Returns:
        (B, C, H, W) adversarial images, detached, of ``x01``'s dtype.

    Only d loss / d x is computed (``torch.autograd.grad(inputs=x)``): no ``param.grad`` is written. Works when
    the caller is under ``torch.no_grad()`` (grad is re-enabled here) or autocast; not under inference_mode.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("fgsm needs autograd; call it under torch.no_grad() rather than torch.inference_mode()")
    model = unwrap_model(model)
    x = x01.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        # Summed, not averaged: the sign is the same, and per-sample gradients do not shrink with the batch
        # size (a mean loss can underflow to zero gradients in float16).
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, inputs=x)
    return (x01.detach() + eps * grad.sign()).clamp_(0.0, 1.0)


def fgsm_errors(model: nn.Module, x01: Tensor, labels: Tensor, eps: float = 8 / 255) -> Tensor:
    """Number of samples of the batch misclassified after ``fgsm(model, x01, labels, eps)``, as a 0-dim int64
    tensor on the batch's device (no host sync). Every sample counts, not only those classified correctly
    before the attack."""
    x_adv = fgsm(model, x01, labels, eps)
    with torch.no_grad():
        return (model(x_adv).argmax(dim=1) != labels).sum()
