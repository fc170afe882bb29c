"""A compact PPO for RL-Mix that keeps its whole loop on the batch's device.

stable-baselines3's PPO as RL-Mix's authors ran it (defaults: gamma 0.99, GAE lambda 0.95, clip 0.2, no
entropy bonus, value weight 0.5, gradient norm 0.5, 10 epochs of minibatches per rollout, per-minibatch
advantage normalisation, Adam with eps 1e-5; their rollouts of 1000 steps in minibatches of 250 and their
learning-rate decay lr * remaining**0.9), written over device tensors. The loop of a training step is
``act`` (sample each sample's level from the policy, with uniforms drawn on a CPU generator) and ``record``
(the step's reward); when a rollout is full the next ``act`` first bootstraps from its observation and
updates the policy, as stable-baselines3 does between two rollouts. Nothing reads a device value back.

Under ``torch.distributed`` every rank keeps its own rollout (its own batches) and one policy: the initial
weights are broadcast from rank 0, and each minibatch's gradients are averaged over the ranks before
clipping and the Adam step, so the policies stay identical (as DDP keeps a model).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from rmix_fast.rl.rollout import RolloutBuffer, gae
from rmix_fast.rl.signals import Observation
from rmix_fast.sampling import to_device

__all__ = ["PPOAgent", "PPOConfig", "ppo_losses", "sample_actions"]


@dataclass(frozen=True)
class PPOConfig:
    """PPO's settings; the defaults are stable-baselines3's and RL-Mix's authors'."""

    n_steps: int = 1000  # training steps per rollout
    minibatch: int = 250  # steps per minibatch
    epochs: int = 10  # passes over a rollout per update
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    lr: float = 3e-4  # ours: the authors' agent_lr is undefined in their code
    lr_power: float = 0.9  # lr * (1 - steps / total_steps) ** lr_power; constant without total_steps
    normalize_advantage: bool = True

    def __post_init__(self) -> None:
        for name in ("n_steps", "minibatch", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        ranges = {
            "gamma": (0.0, 1.0), "gae_lambda": (0.0, 1.0), "clip": (0.0, math.inf), "ent_coef": (0.0, math.inf),
            "vf_coef": (0.0, math.inf), "max_grad_norm": (0.0, math.inf), "lr": (0.0, math.inf),
            "lr_power": (0.0, math.inf),
        }  # fmt: skip
        positive = ("clip", "lr", "max_grad_norm")  # 0 would stop learning altogether
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not lo <= value <= hi or (name in positive and value == 0):
                bounds = f"({lo}, {hi}]" if name in positive else f"[{lo}, {hi}]"
                raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}")
        if self.minibatch > self.n_steps:
            raise ValueError(f"minibatch ({self.minibatch}) must be <= n_steps ({self.n_steps})")


def sample_actions(action_logits: Tensor, uniforms: Tensor) -> Tensor:
    """Categorical draws by inverting each row's CDF at its uniform: (..., L) logits, (...) uniforms in
    [0, 1) -> (...) int64 levels. Deterministic given the uniforms, on any device."""
    probs = torch.softmax(action_logits.float(), dim=-1)
    cdf = probs.cumsum(-1)
    # the first level whose CDF exceeds u: a level of probability 0 is never drawn, even at u = 0. The CDF's
    # float32 total can end below u (u up to 1 - 2**-24): the draw is then the last level of nonzero
    # probability, not a trailing level of probability 0 (nor one past the end)
    levels = torch.arange(probs.shape[-1], device=probs.device)
    last = torch.where(probs > 0, levels, 0).amax(-1)
    return torch.minimum((cdf <= uniforms.unsqueeze(-1)).sum(-1), last)


def _joint(action_logits: Tensor, actions: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """(N, B, L) logits, (N, B) actions and validity -> the joint action's (N,) log probability and entropy:
    sums over the valid samples, as stable-baselines3's MultiCategorical distribution."""
    log_p = F.log_softmax(action_logits, dim=-1)
    w = valid.to(log_p.dtype)
    chosen = log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return (chosen * w).sum(1), (entropy * w).sum(1)


def ppo_losses(
    policy: nn.Module,
    batch: dict[str, Tensor],
    *,
    clip: float,
    ent_coef: float,
    vf_coef: float,
    normalize_advantage: bool = True,
) -> dict[str, Tensor]:
    """PPO's losses on a minibatch of steps (stable-baselines3's ``PPO.train`` body): the clipped surrogate,
    the value MSE and the entropy term, their weighted sum ``loss``, and the approximate KL and clip fraction."""
    action_logits, values = policy(batch["saliency"], batch["logits"], batch["valid"])
    log_prob, entropy = _joint(action_logits, batch["actions"], batch["valid"])
    advantages = batch["advantages"]
    if normalize_advantage and advantages.shape[0] > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = log_prob - batch["log_probs"]
    ratio = log_ratio.exp()
    policy_loss = -torch.min(advantages * ratio, advantages * ratio.clamp(1 - clip, 1 + clip)).mean()
    value_loss = F.mse_loss(batch["returns"], values)
    entropy_loss = -entropy.mean()
    loss = policy_loss + ent_coef * entropy_loss + vf_coef * value_loss
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip).float().mean()
    return {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy_loss": entropy_loss,
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
    }


class PPOAgent(nn.Module):
    """The policy, its Adam optimizer and its rollout buffer: ``act`` and ``record`` per training step,
    ``end_episode`` at the end of an epoch. All of it is in ``state_dict()`` (the buffer and the optimizer
    as extra state), so a run resumed from a checkpoint continues the rollout it was in.

    Args:
        policy: an actor-critic of ``rmix_fast.rl.policies``.
        config: PPO's settings.
        total_steps: the run's training steps, for the learning-rate decay (None: constant lr).
        process_group: the group whose ranks share the policy (None: the default group, when initialised).
    """

    def __init__(
        self,
        policy: nn.Module,
        config: PPOConfig | None = None,
        *,
        total_steps: int | None = None,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.config = config if config is not None else PPOConfig()
        if not isinstance(self.config, PPOConfig):
            raise TypeError(f"config must be a PPOConfig, got {type(self.config).__name__}")
        self.total_steps = total_steps
        self.process_group = process_group
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.config.lr, eps=1e-5)
        self.buffer: RolloutBuffer | None = None
        self.num_timesteps = 0  # steps recorded, over the run
        self.n_updates = 0
        self.last_stats: dict[str, Tensor] = {}
        self._acted = False  # a step acted on, awaiting its reward
        self._synced = False

    # -- the training step's side ---------------------------------------------------------------------
    def act(
        self, obs: Observation, uniforms: Tensor, generator: torch.Generator | None = None, *, record: bool = True
    ) -> Tensor:
        """Each sample's level (B,) int64 on the observation's device, recorded as the next step of the
        rollout. A full rollout is first used for an update (``generator`` shuffles its minibatches).
        ``record=False``: the policy's draw only (``sample``), nothing recorded or learned."""
        if self._acted:
            raise RuntimeError("PPOAgent.act: the previous step has no reward yet; call record(reward) after each act")
        if uniforms.shape != (obs.batch,):
            raise ValueError(f"uniforms must have shape ({obs.batch},), got {tuple(uniforms.shape)}")
        device = obs.saliency.device
        self._sync_initial_weights()
        if not record:
            return self.sample(obs, uniforms)
        K, g = obs.logits.shape[1], obs.saliency.shape[-1]
        if self.buffer is None or not self.buffer.fits(K, g):
            self.buffer = RolloutBuffer(self.config.n_steps, obs.batch, K, g, device)
        valid = torch.ones(1, obs.batch, dtype=torch.bool, device=device)
        # the agent runs in float32 whatever autocast the training step is under
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            action_logits, value = self.policy(obs.saliency.unsqueeze(0), obs.logits.unsqueeze(0), valid)
            if self.buffer.full:
                self.update(last_value=value[0], generator=generator)
                action_logits, value = self.policy(obs.saliency.unsqueeze(0), obs.logits.unsqueeze(0), valid)
            actions = sample_actions(action_logits[0], uniforms.to(device))
            log_prob, _ = _joint(action_logits.float(), actions.unsqueeze(0), valid)
        self.buffer.add(obs.saliency, obs.logits, actions, log_prob[0], value[0])
        self._acted = True
        return actions

    def sample(self, obs: Observation, uniforms: Tensor) -> Tensor:
        """The policy's draw of each sample's level, (B,) int64, without recording it."""
        device = obs.saliency.device
        valid = torch.ones(1, obs.batch, dtype=torch.bool, device=device)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            action_logits, _ = self.policy(obs.saliency.unsqueeze(0), obs.logits.unsqueeze(0), valid)
        return sample_actions(action_logits[0], uniforms.to(device))

    def discard(self) -> None:
        """Forget the step acted on last (no reward will come): the next ``act`` takes its place."""
        self._acted = False

    def record(self, reward: Tensor) -> None:
        """The reward (0-d tensor) of the step acted on last."""
        if not self._acted:
            raise RuntimeError("PPOAgent.record: no step to reward; call act first")
        self.buffer.finish(reward)
        self._acted = False
        self.num_timesteps += 1

    def end_episode(self) -> None:
        """The last recorded step ended an episode (an epoch of training)."""
        if self.buffer is not None:
            self.buffer.end_episode()

    # -- the update -----------------------------------------------------------------------------------
    def learning_rate(self) -> float:
        c = self.config
        if not self.total_steps:
            return c.lr
        remaining = max(0.0, 1.0 - self.num_timesteps / self.total_steps)
        return c.lr * remaining**c.lr_power

    def update(self, last_value: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One PPO update on the full rollout (stable-baselines3's ``train()``), then an empty buffer.
        Returns the minibatches' mean losses as device tensors (``last_stats``)."""
        buf, c = self.buffer, self.config
        if buf is None or not buf.full:
            raise RuntimeError("PPOAgent.update needs a full rollout")
        advantages, returns = gae(
            buf.rewards, buf.values, buf.dones, last_value.float(), gamma=c.gamma, gae_lambda=c.gae_lambda
        )
        data = {
            "saliency": buf.saliency, "logits": buf.logits, "valid": buf.valid, "actions": buf.actions,
            "log_probs": buf.log_probs, "advantages": advantages, "returns": returns,
        }  # fmt: skip
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        totals: dict[str, Tensor] = {}
        count = 0
        with torch.enable_grad():
            for _ in range(c.epochs):
                order = to_device(torch.randperm(buf.n_steps, generator=generator), buf.rewards.device)
                for start in range(0, buf.n_steps, c.minibatch):
                    idx = order[start : start + c.minibatch]
                    losses = ppo_losses(
                        self.policy,
                        {k: v[idx] for k, v in data.items()},
                        clip=c.clip,
                        ent_coef=c.ent_coef,
                        vf_coef=c.vf_coef,
                        normalize_advantage=c.normalize_advantage,
                    )
                    self.optimizer.zero_grad(set_to_none=True)
                    losses["loss"].backward()
                    self._average_gradients(params)
                    nn.utils.clip_grad_norm_(params, c.max_grad_norm)
                    self.optimizer.step()
                    for k, v in losses.items():
                        totals[k] = totals.get(k, 0) + v.detach()
                    count += 1
        buf.pos = 0
        self.n_updates += 1
        self.last_stats = {k: v / count for k, v in totals.items()}
        return self.last_stats

    # -- ranks ----------------------------------------------------------------------------------------
    def _world(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def _sync_initial_weights(self) -> None:
        if self._synced:
            return
        self._synced = True
        if self._world() > 1:
            src = dist.get_global_rank(self.process_group, 0) if self.process_group is not None else 0
            for t in [*self.policy.parameters(), *self.policy.buffers()]:
                dist.broadcast(t.data, src=src, group=self.process_group)

    def _average_gradients(self, params: list[nn.Parameter]) -> None:
        world = self._world()
        if world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.process_group)
        flat /= world
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(p)
            offset += g.numel()

    # -- state ----------------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        if self._acted:
            raise RuntimeError("PPOAgent: a step awaits its reward; save the state between steps")
        return {
            "config": asdict(self.config),
            "optimizer": self.optimizer.state_dict(),
            "buffer": self.buffer.state() if self.buffer is not None else None,
            "num_timesteps": self.num_timesteps,
            "n_updates": self.n_updates,
            # the last update's losses: reported with every epoch until the next update, so a resumed run's
            # epochs before its first update report what an uninterrupted run's do
            "last_stats": dict(self.last_stats),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(f"the saved agent ran with {state['config']}, this one with {asdict(self.config)}")
        # copies: a state taken from a live agent (state_dict() in memory) must not share its tensors
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        device = next(self.policy.parameters()).device
        buffer = state["buffer"]
        self.buffer = RolloutBuffer.from_state(copy.deepcopy(buffer)).to(device) if buffer is not None else None
        self.num_timesteps = int(state["num_timesteps"])
        self.n_updates = int(state["n_updates"])
        # a state saved before any update holds none
        self.last_stats = {k: v.to(device, copy=True) for k, v in state.get("last_stats", {}).items()}
        self._acted = False
        self._synced = True  # every rank loads the same weights

    def extra_repr(self) -> str:
        return f"config={self.config}, total_steps={self.total_steps}"
