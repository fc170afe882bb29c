"""What RL-Mix's agent sees and what it is rewarded with, as device tensors (no host reads).

The observation of a batch is its clean pass: the input gradient's channel RMS average-pooled to a
``grid x grid`` map, normalised to sum 1 per sample, and the clean logits. The reward of a step compares that
pooled map (unnormalised) with the same map of the gradient the training loss sends to the mixed images: the
cosine of the two, with the whole batch flattened into one vector, as the authors' environment computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rmix_fast.ops import saliency_grid

__all__ = ["Observation", "cosine_reward", "observe", "saliency_reward"]


@dataclass(frozen=True)
class Observation:
    """One batch as the agent sees it (all float32, on the batch's device)."""

    saliency: Tensor  # (B, g, g) pooled channel-RMS saliency, each sample's map summing to 1
    logits: Tensor  # (B, K) the clean pass's logits
    pooled: Tensor  # (B, g, g) the same map unnormalised: the reward's reference

    @property
    def batch(self) -> int:
        return self.saliency.shape[0]


def _check_grid(grad: Tensor, grid: int, name: str) -> None:
    if not isinstance(grad, Tensor) or grad.dim() != 4 or not grad.is_floating_point():
        raise TypeError(f"{name} must be a 4-D float tensor (B, C, H, W), got {grad!r:.80}")
    H, W = grad.shape[-2:]
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1 or H % grid or W % grid:
        raise ValueError(f"obs_grid must be an int >= 1 dividing H={H} and W={W}, got {grid!r}")


def observe(grad: Tensor, logits: Tensor, grid: int = 8) -> Observation:
    """The agent's observation of a batch from its clean pass: ``grad`` (B, C, H, W) and ``logits`` (B, K).

    A sample whose pooled map is zero or not finite is observed as the uniform map (1 / grid**2 per cell),
    as ``saliency_grid`` does; the authors' division would give NaN there."""
    _check_grid(grad, grid, "grad")
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != grad.shape[0]:
        raise ValueError(f"logits must be (B, K) with B={grad.shape[0]}, got {logits!r:.80}")
    pooled = saliency_grid(grad.detach().float(), grid, normalize=False)
    total = pooled.sum(dim=(1, 2), keepdim=True)
    usable = torch.isfinite(total) & (total > 0)
    saliency = torch.where(usable, pooled / torch.where(usable, total, 1), torch.full_like(pooled, 1.0 / grid**2))
    return Observation(saliency, logits.detach().float(), pooled)


def cosine_reward(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of ``a`` and ``b`` flattened, as a 0-d float32 tensor; 0 (never NaN) when either
    is zero or the result is not finite (an overflowed float16 gradient)."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    denom = a.norm() * b.norm()
    cos = (a * b).sum() / torch.where(denom > 0, denom, 1)
    return torch.where((denom > 0) & torch.isfinite(cos), cos, 0).float()


def saliency_reward(obs: Observation, grad_mix: Tensor) -> Tensor:
    """The step's reward: the cosine between the clean pooled map and the mixed gradient's pooled map, the
    batch flattened into one vector; a 0-d float32 tensor on the batch's device."""
    grid = obs.pooled.shape[-1]
    _check_grid(grad_mix, grid, "grad_mix")
    if grad_mix.shape[0] != obs.batch:
        raise ValueError(f"grad_mix must have the observed batch size {obs.batch}, got {tuple(grad_mix.shape)}")
    return cosine_reward(obs.pooled, saliency_grid(grad_mix.detach().float(), grid, normalize=False))
