"""RL-Mix's rollout buffer on the device, and generalised advantage estimation.

The buffer holds one rollout of ``n_steps`` training steps: each step's observation, joint action, its log
probability and value at acting time, and (once the step has trained) its reward and whether it ended an
episode. Batches of different sizes share it: it is as wide as the largest batch, and ``valid`` masks the
padding. Steps are written at a host-side position, so recording never reads the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["RolloutBuffer", "gae"]


def gae(
    rewards: Tensor, values: Tensor, dones: Tensor, last_value: Tensor, *, gamma: float, gae_lambda: float
) -> tuple[Tensor, Tensor]:
    """Advantages and returns of one rollout, stable-baselines3's ``compute_returns_and_advantage``.

    ``dones[t]`` is 1 when step t ended an episode (its successor is not bootstrapped); ``last_value`` is the
    value of the observation after the last step. Returns ``(advantages, advantages + values)``."""
    n = rewards.shape[0]
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(n)):  # n small launches once per rollout, in the reference's order of operations
        next_value = last_value if t == n - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        running = delta + gamma * gae_lambda * nonterminal * running
        advantages[t] = running
    return advantages, advantages + values


class RolloutBuffer:
    """``n_steps`` steps of (B, g, g) saliency, (B, K) logits, (B,) actions and validity, and per-step
    log probability, value, reward and done, on one device."""

    FIELDS = ("saliency", "logits", "valid", "actions", "log_probs", "values", "rewards", "dones")

    def __init__(self, n_steps: int, batch: int, num_classes: int, grid: int, device: torch.device) -> None:
        self.n_steps = n_steps
        self.pos = 0
        f32 = {"dtype": torch.float32, "device": device}
        self.saliency = torch.zeros(n_steps, batch, grid, grid, **f32)
        self.logits = torch.zeros(n_steps, batch, num_classes, **f32)
        self.valid = torch.zeros(n_steps, batch, dtype=torch.bool, device=device)
        self.actions = torch.zeros(n_steps, batch, dtype=torch.int64, device=device)
        self.log_probs = torch.zeros(n_steps, **f32)
        self.values = torch.zeros(n_steps, **f32)
        self.rewards = torch.zeros(n_steps, **f32)
        self.dones = torch.zeros(n_steps, **f32)

    @property
    def width(self) -> int:
        return self.saliency.shape[1]

    @property
    def full(self) -> bool:
        return self.pos == self.n_steps

    def fits(self, num_classes: int, grid: int) -> bool:
        return self.logits.shape[2] == num_classes and self.saliency.shape[2] == grid

    def widen(self, batch: int) -> None:
        """Room for batches of ``batch`` samples: the per-sample fields padded (invalid) to that width."""
        extra = batch - self.width
        if extra <= 0:
            return
        for name in ("saliency", "logits", "valid", "actions"):
            t = getattr(self, name)
            setattr(self, name, torch.cat([t, t.new_zeros(t.shape[0], extra, *t.shape[2:])], dim=1))

    def add(self, saliency: Tensor, logits: Tensor, actions: Tensor, log_prob: Tensor, value: Tensor) -> None:
        """Writes a step's acting-time record at the current position (its reward comes with ``finish``)."""
        B, t = saliency.shape[0], self.pos
        self.widen(B)
        self.saliency[t, :B] = saliency
        self.logits[t, :B] = logits
        self.actions[t, :B] = actions
        self.valid[t] = False
        self.valid[t, :B] = True
        self.log_probs[t] = log_prob
        self.values[t] = value

    def finish(self, reward: Tensor) -> None:
        """The reward of the step written last; moves to the next position."""
        self.rewards[self.pos] = reward
        self.dones[self.pos] = 0.0
        self.pos += 1

    def end_episode(self) -> None:
        """Marks the last finished step as the end of an episode (no bootstrapping past it)."""
        if self.pos > 0:
            self.dones[self.pos - 1] = 1.0

    def state(self) -> dict[str, Any]:
        return {"pos": self.pos, "n_steps": self.n_steps, **{k: getattr(self, k) for k in self.FIELDS}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RolloutBuffer:
        buf = cls.__new__(cls)
        buf.n_steps, buf.pos = int(state["n_steps"]), int(state["pos"])
        for k in cls.FIELDS:
            setattr(buf, k, state[k])
        return buf

    def to(self, device: torch.device) -> RolloutBuffer:
        for k in self.FIELDS:
            setattr(self, k, getattr(self, k).to(device))
        return self
