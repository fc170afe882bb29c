"""Top-k accuracy: hit counts of one batch, kept on the device so a loop can add them up without a host sync."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["topk_hits"]


def topk_hits(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> tuple[Tensor, Tensor]:
    """How many samples have their label among the k largest logits, for each k in ``ks``, with one topk call.

    Args:
        logits: (B, K) scores.
        labels: (B,) int64 class indices.
        ks: the k values, each >= 1; a k larger than K counts as K (so top-5 of a 4-class problem is every sample).

    Returns:
        ``(counts, pred)``: (len(ks),) int64 hit counts on the logits' device, in the order of ``ks``, and the
        (B,) top-1 predictions (``counts[i]`` for k = 1 is ``(pred == labels).sum()``).
    """
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}")
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (B, K) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    num_classes = logits.shape[1]
    kmax = min(max(ks), num_classes)
    top = logits.topk(kmax, dim=1).indices  # (B, kmax), best first
    hit = top == labels.view(-1, 1)  # at most one True per row
    # k beyond K is clipped: with K classes the true class is always within the top K.
    counts = torch.stack([hit[:, : min(k, num_classes)].sum() for k in ks])
    return counts, top[:, 0]
