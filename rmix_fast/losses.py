"""Losses for the soft targets the mixers produce: (B, K) logits against (B, K) target distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOSSES", "SoftTargetBCEWithLogits", "SoftTargetCrossEntropy", "SoftmaxBCE"]


def _check(logits: Tensor, target: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be a (B, K) tensor, got {logits!r:.80}")
    if not isinstance(target, Tensor) or target.shape != logits.shape or not target.is_floating_point():
        raise ValueError(
            f"target must be a float tensor of the logits' shape {tuple(logits.shape)}, got "
            f"{getattr(target, 'dtype', type(target).__name__)} {tuple(getattr(target, 'shape', ()))}"
        )


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against soft targets: ``mean_b sum_k -target[b, k] * log_softmax(logits)[b, k]``.

    Equals ``F.cross_entropy(logits, labels)`` for one-hot targets. Computed in float32 at least, so it is
    safe under autocast.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check(logits, target)
        log_p = F.log_softmax(logits.float(), dim=-1)
        return torch.sum(-target.to(log_p.dtype) * log_p, dim=-1).mean()


class SoftTargetBCEWithLogits(nn.Module):
    """Binary cross-entropy of every class against soft targets, as in "ResNet strikes back" / DeiT III:
    each logit is an independent sigmoid whose target is that class's mixed weight.

    Args:
        reduction: "mean" (over batch and classes, like ``F.binary_cross_entropy_with_logits``) or "sum"
            over classes then mean over the batch ("sum_classes").
        pos_weight: optional (K,) weight of the positive term per class.
    """

    def __init__(self, reduction: str = "mean", pos_weight: Tensor | None = None) -> None:
        super().__init__()
        if reduction not in ("mean", "sum_classes"):
            raise ValueError(f"reduction must be 'mean' or 'sum_classes', got {reduction!r}")
        self.reduction = reduction
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check(logits, target)
        loss = F.binary_cross_entropy_with_logits(
            logits.float(), target.float(), pos_weight=self.pos_weight, reduction="none"
        )
        return loss.mean() if self.reduction == "mean" else loss.sum(dim=-1).mean()


class SoftmaxBCE(nn.Module):
    """Binary cross-entropy of the softmax probabilities against soft targets, averaged over the B·K
    elements: ``BCELoss()(softmax(logits), target)``, the loss PuzzleMix, Co-Mixup and SAGE train their
    CIFAR protocol with (Mixup, CutMix and Manifold Mixup baselines included). Unlike
    ``SoftTargetBCEWithLogits`` the classes share one softmax. Computed in float32 outside autocast (BCE on
    probabilities is not autocast-safe); each log is clamped at -100 as ``BCELoss`` does.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check(logits, target)
        with torch.autocast(logits.device.type, enabled=False):
            probs = torch.softmax(logits.float(), dim=-1)
            return F.binary_cross_entropy(probs, target.float())


# The losses rmix-train offers, by name (``--loss``).
LOSSES: dict[str, type[nn.Module]] = {"soft_ce": SoftTargetCrossEntropy, "softmax_bce": SoftmaxBCE}
