"""AdAutoMix's loss terms, as ``AdAutoMix.forward_train`` / ``forward_k`` / ``forward_q`` combine them
(JinXins/Adversarial-AutoMixup, ``openmixup/models/classifiers/AdAutoMix.py``).

* Mixed labels (``mixed_targets``): ``sum_i lam_i * y[index[i]]``, the sampled λ and not the mask areas.
  The heads' ``co_loss`` / mixup ``loss`` is ``sum_i lam_i CE(pred, y[index[i]])``, which equals the
  cross-entropy against these soft targets exactly (cross-entropy is linear in the target).
* The cosine term (``cosine_term``): ``mean_b sum_i lam_i cos(p_mix[b], p_i[b])`` between the teacher's
  prediction on the generator's mix and its predictions on each source (``torch.nn.CosineSimilarity(dim=-1)``,
  eps 1e-8).
* The generator's objective (``generator_objective``): on adversarial iterations (the code's ``self.iter % 2
  == 0``: the first, third, ...) ``-beta * L_k + (1 - beta) * cos``, else ``L_k``.

The sign of the cosine term. Minimising ``+(1 - beta) * cos`` pushes the teacher's prediction on the mix
*away* from its predictions on the sources. The paper motivates the term as what keeps the mixes from
collapsing away from the sources' meaning ("to prevent the collapse of the inherent meanings of images, we
further introduce an EMA teacher and cosine similarity"), which reads as the opposite sign; the equation
itself could not be read from the material at hand. The code is what produced the published numbers, so its
sign is kept: both terms then make the adversarial iteration's mix harder. The other sign is not offered:
nothing published measures it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_term", "generator_objective", "mixed_targets"]


def mixed_targets(targets: Tensor, index: Tensor, lam: Tensor) -> Tensor:
    """(B, K) targets, (N, B) source indices, (N,) weights -> (B, K) ``sum_i lam_i * targets[index[i]]``,
    in float32 (float64 for float64 targets), summed in source order as the published loss is."""
    if targets.dim() != 2 or index.dim() != 2 or index.shape[1] != targets.shape[0]:
        raise ValueError(
            f"targets must be (B, K) and index (N, B) over the same batch, got {tuple(targets.shape)} and "
            f"{tuple(index.shape)}"
        )
    if lam.dim() != 1 or lam.shape[0] != index.shape[0]:
        raise ValueError(f"lam must hold one weight per source ({index.shape[0]}), got shape {tuple(lam.shape)}")
    dtype = torch.promote_types(targets.dtype, torch.float32)
    gathered = targets.to(dtype)[index]  # (N, B, K)
    return (gathered * lam.to(dtype).view(-1, 1, 1)).sum(0)


def cosine_term(mixed_logits: Tensor, source_logits: Tensor, lam: Tensor) -> Tensor:
    """``mean_b sum_i lam_i cos(mixed_logits[b], source_logits[i, b])``: the teacher's prediction on a mix
    against its predictions on the N sources, (B, K) and (N, B, K) logits, (N,) weights. A scalar in the
    logits' dtype promoted to float32."""
    if source_logits.dim() != 3 or source_logits.shape[1:] != mixed_logits.shape:
        raise ValueError(
            f"source_logits must be (N, B, K) with (B, K) = {tuple(mixed_logits.shape)}, "
            f"got {tuple(source_logits.shape)}"
        )
    dtype = torch.promote_types(mixed_logits.dtype, torch.float32)
    sims = F.cosine_similarity(mixed_logits.to(dtype).unsqueeze(0), source_logits.to(dtype), dim=-1, eps=1e-8)
    return (sims * lam.to(dtype).view(-1, 1)).sum(0).mean()


def generator_objective(mixed_loss: Tensor, cosine: Tensor, *, adversarial: bool, beta: float) -> Tensor:
    """What the mask generator minimises: ``-beta * mixed_loss + (1 - beta) * cosine`` on an adversarial
    iteration, ``mixed_loss`` on the others (``mixed_loss`` is the teacher's loss on the generator's mix)."""
    if not adversarial:
        return mixed_loss
    return -beta * mixed_loss + (1.0 - beta) * cosine
