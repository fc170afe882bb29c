"""RL-Mix's actor-critic networks: from a batch's observations to each sample's level logits and one value.

Both take a stack of N steps: ``saliency`` (N, B, g, g), ``logits`` (N, B, K) and ``valid`` (N, B) (False
for padding, when a rollout holds batches of different sizes), and return ``(action_logits (N, B, levels),
values (N,))``. The action of a step is the B samples' levels together (one joint action, as the authors'
``MultiDiscrete`` space), and the value is that of the whole step.

- ``SamplePolicy`` (ours, the default) runs one shared network per sample, so it works for any batch size;
  a step's value is the mean of its samples' values.
- ``BatchChannelsPolicy`` is the authors' network: their feature extractor (the batch as convolution
  channels, so B is fixed) under stable-baselines3's default ``MultiInputPolicy`` heads.

Initialisation is stable-baselines3's: orthogonal weights with gain sqrt(2) in the trunk, 0.01 for the
action head and 1 for the value head, zero biases; from ``generator`` when one is given.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["POLICIES", "BatchChannelsPolicy", "SamplePolicy", "orthogonal_init"]


def orthogonal_init(module: nn.Module, gain: float, generator: torch.Generator | None = None) -> None:
    """stable-baselines3's ``init_weights``: orthogonal weights of every Linear and Conv2d, zero biases
    (drawn from ``generator``, else the global RNG)."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.orthogonal_(m.weight, gain=gain, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _heads(features: int, hidden: int) -> tuple[nn.Module, nn.Module]:
    """stable-baselines3's default ``net_arch``: separate pi and vf MLPs of two tanh layers."""
    return tuple(  # type: ignore[return-value]
        nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()) for _ in range(2)
    )


def _check_sizes(num_classes: int, levels: int, grid: int) -> None:
    for name, value in (("num_classes", num_classes), ("levels", levels), ("obs_grid", grid)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class SamplePolicy(nn.Module):
    """One network shared by every sample: its g x g saliency map (scaled by g**2, so a uniform map is all
    ones) through two small convolutions, its logits through a linear layer, both into a ReLU layer of
    ``features``; then stable-baselines3's pi and vf heads. Any batch size."""

    def __init__(
        self,
        num_classes: int,
        levels: int = 10,
        obs_grid: int = 8,
        features: int = 256,
        hidden: int = 64,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(num_classes, levels, obs_grid)
        self.num_classes, self.levels, self.obs_grid = num_classes, levels, obs_grid
        half = (obs_grid + 1) // 2
        self.saliency_net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.logits_net = nn.Sequential(nn.Linear(num_classes, 64), nn.ReLU())
        self.trunk = nn.Sequential(nn.Linear(32 * half * half + 64, features), nn.ReLU())
        self.pi_net, self.vf_net = _heads(features, hidden)
        self.action_net = nn.Linear(hidden, levels)
        self.value_net = nn.Linear(hidden, 1)
        for part in (self.saliency_net, self.logits_net, self.trunk, self.pi_net, self.vf_net):
            orthogonal_init(part, math.sqrt(2), generator)
        orthogonal_init(self.action_net, 0.01, generator)
        orthogonal_init(self.value_net, 1.0, generator)

    def forward(self, saliency: Tensor, logits: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        N, B, g, _ = saliency.shape
        s = self.saliency_net((saliency * (g * g)).reshape(N * B, 1, g, g))
        h = self.trunk(torch.cat([s, self.logits_net(logits.reshape(N * B, -1))], dim=1))
        action_logits = self.action_net(self.pi_net(h)).reshape(N, B, self.levels)
        values = self.value_net(self.vf_net(h)).reshape(N, B)
        w = valid.to(values.dtype)
        return action_logits, (values * w).sum(1) / w.sum(1).clamp_min(1)


class BatchChannelsPolicy(nn.Module):
    """The authors' ``CNNExtractor`` (the B saliency maps as the channels of Conv2d(B, 150, 3) -> ReLU ->
    Conv2d(150, 100, 2) -> ReLU; each sample's logits through Linear(K, 256); all concatenated into
    Linear(., 256) -> ReLU) and stable-baselines3's ``MultiInputPolicy`` heads (pi and vf [64, 64] tanh, an
    action layer of B * levels logits, one value). Needs the fixed batch size B; obs_grid >= 3."""

    def __init__(
        self,
        batch: int,
        num_classes: int,
        levels: int = 10,
        obs_grid: int = 8,
        features: int = 256,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(num_classes, levels, obs_grid)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        if obs_grid < 3:
            raise ValueError(f"BatchChannelsPolicy needs obs_grid >= 3 (a 3x3 then a 2x2 convolution), got {obs_grid}")
        self.batch, self.num_classes, self.levels, self.obs_grid = batch, num_classes, levels, obs_grid
        self.cnn = nn.Sequential(
            nn.Conv2d(batch, 150, 3), nn.ReLU(), nn.Conv2d(150, 100, 2), nn.ReLU(), nn.Flatten(start_dim=1)
        )
        self.logits_layer = nn.Sequential(nn.Linear(num_classes, features), nn.Flatten())
        embed = 100 * (obs_grid - 3) ** 2 + batch * features
        self.linear = nn.Sequential(nn.Linear(embed, features), nn.ReLU())
        self.pi_net, self.vf_net = _heads(features, 64)
        self.action_net = nn.Linear(64, batch * levels)
        self.value_net = nn.Linear(64, 1)
        for part in (self.cnn, self.logits_layer, self.linear, self.pi_net, self.vf_net):
            orthogonal_init(part, math.sqrt(2), generator)
        orthogonal_init(self.action_net, 0.01, generator)
        orthogonal_init(self.value_net, 1.0, generator)

    def forward(self, saliency: Tensor, logits: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        N, B = saliency.shape[:2]
        if B != self.batch:
            raise ValueError(f"BatchChannelsPolicy was built for batches of {self.batch}, got {B}")
        h = self.linear(torch.cat([self.cnn(saliency), self.logits_layer(logits)], dim=1))
        return self.action_net(self.pi_net(h)).reshape(N, B, self.levels), self.value_net(self.vf_net(h)).reshape(N)


POLICIES = ("sample", "batch-channels")
