"""RL-Mix (Luu et al. 2023, section 5.2): R-Mix whose percentile level per sample is chosen by a PPO agent.

A step: the clean pass gives the input gradient and logits (the observation); the agent draws each sample's
level; the mix is ``rmix`` with those q (p, lam and the partner drawn as R-Mix draws them); the training
loss's backward gives the gradient w.r.t. the mixed images, whose pooled saliency against the clean one is
the step's reward (``after_backward``). An epoch is an episode (``end_epoch``). The agent (policy,
optimizer, rollout buffer) is the mixer's state: checkpointed with the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rmix_fast.mixers.base import MixParams
from rmix_fast.mixers.rmix import RMix
from rmix_fast.rl import BatchChannelsPolicy, Observation, PPOAgent, PPOConfig, SamplePolicy, observe, saliency_reward
from rmix_fast.sampling import paper_levels, to_device

__all__ = ["RLMix"]


class RLMix(RMix):
    """R-Mix with each sample's level from a PPO agent: ``x_mix, y_soft = mixer(x, y, grad, logits=logits)``,
    then ``mixer.after_backward()`` once the loss of the mixed batch has run its backward.

    Args:
        num_classes, alpha, grids, levels, prob, label_smoothing, per_sample_lam, generator, backend: as
            ``RMix`` (the mask's grid p is still drawn from ``grids`` per batch, as in the authors' code).
        obs_grid: the observation's pooled saliency is obs_grid x obs_grid (the authors': 8).
        policy: "sample" (``SamplePolicy``: one network per sample, any batch size), "batch-channels" (the
            authors' network; needs ``batch``) or an actor-critic module of that interface. A policy built
            here is initialised from ``generator`` (else the global RNG).
        batch: the fixed batch size of the "batch-channels" policy.
        ppo: PPO's settings (``PPOConfig``; default: stable-baselines3's and the authors').
        learn: False: the policy acts but nothing is recorded or learned (a trained policy, frozen).

    The mixed images returned require grad (a leaf, or with ``retain_grad`` when x itself requires grad), so
    the training backward leaves their gradient for the reward at no extra pass. A mix that no backward
    reached by the next call (an evaluation, a skipped step) is dropped from the rollout; one whose backward
    ran without ``after_backward`` is a wiring error (``RuntimeError``). Under ``torch.no_grad()`` or with
    ``learn=False`` the policy acts and nothing is recorded.
    """

    needs_logits = True

    def __init__(
        self,
        num_classes: int,
        alpha: float = 1.0,
        grids: Sequence[int] = (2, 4),
        levels: int = 10,
        prob: float = 1.0,
        label_smoothing: float = 0.0,
        per_sample_lam: bool = False,
        generator: torch.Generator | None = None,
        backend: str = "auto",
        *,
        obs_grid: int = 8,
        policy: str | nn.Module = "sample",
        batch: int | None = None,
        ppo: PPOConfig | None = None,
        learn: bool = True,
    ) -> None:
        super().__init__(
            num_classes, alpha, grids, levels, prob, label_smoothing, per_sample_lam, generator, backend
        )  # fmt: skip
        if isinstance(obs_grid, bool) or not isinstance(obs_grid, int) or obs_grid < 1:
            raise ValueError(f"obs_grid must be an int >= 1, got {obs_grid!r}")
        self.obs_grid = obs_grid
        if policy == "sample":
            policy = SamplePolicy(num_classes, levels, obs_grid, generator=generator)
        elif policy == "batch-channels":
            if batch is None:
                raise ValueError("policy='batch-channels' (the authors' network) needs the fixed batch size: batch=B")
            policy = BatchChannelsPolicy(batch, num_classes, levels, obs_grid, generator=generator)
        elif not isinstance(policy, nn.Module):
            raise ValueError(f"policy must be 'sample', 'batch-channels' or an nn.Module, got {policy!r}")
        self.agent = PPOAgent(policy, ppo)
        self.learn = bool(learn)
        self.register_buffer("level_values", paper_levels(levels).to(torch.float32), persistent=False)
        self._logits: Tensor | None = None
        self._pending: tuple[Observation, Tensor] | None = None
        self._sums: Tensor | None = None  # reward, mean q, steps of the epoch, on the device
        self._last_q_mean: Tensor | None = None

    def forward(
        self, x: Tensor, y: Tensor, grad: Tensor | None = None, *, logits: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if self._pending is not None:
            if self._pending[1].grad is not None:
                raise RuntimeError(
                    "RLMix: the previous mix ran its backward but was not rewarded; call mixer.after_backward() "
                    "after each backward"
                )
            # no backward reached the previous mix (an evaluation, a skipped step): it is not learned from
            self._pending = None
            self.agent.discard()
            self._sums[2] -= 1
            self._sums[1] -= self._last_q_mean
        self._logits = logits
        try:
            return super().forward(x, y, grad, logits=logits)
        finally:
            self._logits = None

    def mix(self, x: Tensor, grad: Tensor | None) -> tuple[Tensor, MixParams]:
        where = next(self.agent.policy.parameters()).device
        if where != x.device:
            raise ValueError(f"RLMix's agent is on {where}, the batch on {x.device}: move it with mixer.to(x.device)")
        p = self.draw_params(x)
        obs = observe(grad, self._logits, self.obs_grid)
        uniforms = to_device(torch.rand(x.shape[0], generator=self.generator), x.device)
        learning = self.learn and torch.is_grad_enabled()
        actions = self.agent.act(obs, uniforms, self.generator, record=learning)
        levels = self.level_values
        if levels.device != x.device:  # a mixer not moved with .to(device): copy without blocking
            levels = to_device(levels, x.device)
        q = levels[actions]
        mixed, params = self.blend(x, grad, dataclasses.replace(p, q=q))
        if learning:
            # the training backward leaves d loss / d mixed here: the reward's gradient, without another pass
            mixed.retain_grad() if mixed.requires_grad else mixed.requires_grad_(True)
            self._pending = (obs, mixed)
            self._count(q)
        return mixed, dataclasses.replace(params, actions=actions)

    def after_backward(self) -> None:
        if self._pending is None:
            return
        obs, mixed = self._pending
        if mixed.grad is None:
            raise RuntimeError(
                "RLMix.after_backward: the mixed images have no gradient; call it after the backward of a loss "
                "computed from them"
            )
        self._pending = None
        reward = saliency_reward(obs, mixed.grad)
        mixed.grad = None
        self.agent.record(reward)
        self._sums[0] += reward

    def _count(self, q: Tensor) -> None:
        if self._sums is None or self._sums.device != q.device:
            self._sums = torch.zeros(3, dtype=torch.float64, device=q.device)
        self._last_q_mean = q.double().mean()
        self._sums[1] += self._last_q_mean
        self._sums[2] += 1

    def end_epoch(self) -> None:
        self.agent.end_episode()

    def set_total_steps(self, total_steps: int) -> None:
        self.agent.total_steps = total_steps

    def epoch_stats(self) -> dict[str, float]:
        if self._sums is None:
            return {}
        reward, q, steps = self._sums.tolist()
        self._sums = None
        steps = max(steps, 1)
        stats = {"rl_reward": reward / steps, "rl_mean_q": q / steps, "rl_updates": self.agent.n_updates}
        stats.update({f"rl_{k}": float(v) for k, v in self.agent.last_stats.items() if k != "loss"})
        return stats

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, obs_grid={self.obs_grid}, learn={self.learn}"
