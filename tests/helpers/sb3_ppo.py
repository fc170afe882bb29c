"""stable-baselines3's PPO set up as RL-Mix's authors ran it, for ``rl/test_ppo.py``'s cross-check of one update:
their feature extractor, their observation and action spaces, and the map from ``BatchChannelsPolicy``'s
parameters to SB3's ``MultiInputPolicy``'s. Imports stable-baselines3 and gymnasium (the ``rl`` extra)."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from rmix_fast.rl import PPOConfig

__all__ = ["AuthorsCNNExtractor", "BatchEnv", "copy_weights_into_sb3", "make_sb3_ppo", "sb3_name"]


class AuthorsCNNExtractor(BaseFeaturesExtractor):
    """RL-Mix's authors' ``CNNExtractor`` (policy_network.py of minhlong94/Random-Mixup) as they wrote it, but
    for the embedding width: taken from zeros rather than from a sample of the space (the same width, and no
    draw from the space's generator)."""

    def __init__(self, observation_space: Any, features_dim: int = 256, num_class: int = 100) -> None:
        super().__init__(observation_space, features_dim)
        n_input_channels = observation_space["saliency"].shape[0]
        self.cnn = nn.Sequential(
            nn.Conv2d(n_input_channels, 150, kernel_size=(3, 3), stride=(1, 1), padding=0),
            nn.ReLU(),
            nn.Conv2d(150, 100, kernel_size=(2, 2), stride=(1, 1), padding=0),
            nn.ReLU(),
            nn.Flatten(start_dim=1),
        )
        self.logits_layer = nn.Sequential(nn.Linear(num_class, features_dim), nn.Flatten())
        with torch.no_grad():
            embed_dim = self.cnn(torch.zeros(1, *observation_space["saliency"].shape)).shape[-1]
            embed_dim += self.logits_layer(torch.zeros(1, *observation_space["logits"].shape)).shape[-1]
        self.linear = nn.Sequential(nn.Linear(embed_dim, features_dim), nn.ReLU())

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        cat = torch.cat((self.cnn(observations["saliency"]), self.logits_layer(observations["logits"])), dim=1)
        return self.linear(cat)


class BatchEnv(gym.Env):
    """The authors' spaces for batches of ``batch``: saliency maps in [0, 1], logits, one level per sample.
    Never stepped by the cross-check (its rollout buffer is filled by hand); ``reset``/``step`` for SB3's
    wrappers."""

    def __init__(self, batch: int, num_classes: int, levels: int, grid: int) -> None:
        self.observation_space = gym.spaces.Dict(
            saliency=gym.spaces.Box(0.0, 1.0, (batch, grid, grid)),
            logits=gym.spaces.Box(-np.inf, np.inf, (batch, num_classes)),
        )
        self.action_space = gym.spaces.MultiDiscrete([levels] * batch)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        return self.observation_space.sample(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, False, False, {}


_PREFIXES = (
    ("cnn.", "features_extractor.cnn."),
    ("logits_layer.", "features_extractor.logits_layer."),
    ("linear.", "features_extractor.linear."),
    ("pi_net.", "mlp_extractor.policy_net."),
    ("vf_net.", "mlp_extractor.value_net."),
    ("action_net.", "action_net."),
    ("value_net.", "value_net."),
)


def sb3_name(ours: str) -> str:
    """A ``BatchChannelsPolicy`` parameter name -> the ``MultiInputPolicy`` one."""
    for a, b in _PREFIXES:
        if ours.startswith(a):
            return b + ours[len(a) :]
    raise AssertionError(f"unmapped parameter {ours}")


def copy_weights_into_sb3(ours: nn.Module, model: PPO) -> None:
    """Our weights into SB3's policy, name by name; the two sides' parameters must pair up one to one, shape
    for shape (SB3's pi/vf extractors are the shared one: its parameters list it once, as features_extractor)."""
    theirs = dict(model.policy.named_parameters())
    mine = {sb3_name(n): p for n, p in ours.named_parameters()}
    assert sorted(mine) == sorted(theirs)
    assert not list(model.policy.buffers()) and not list(ours.buffers())
    with torch.no_grad():
        for name, p in theirs.items():
            assert p.shape == mine[name].shape, name
            p.copy_(mine[name])


def make_sb3_ppo(config: PPOConfig, batch: int, num_classes: int, levels: int, grid: int) -> PPO:
    """SB3's PPO with the authors' extractor and our settings: the same rollout length, minibatch, epochs,
    coefficients and learning-rate schedule (lr * remaining**lr_power, evaluated at the progress SB3 is given),
    on the CPU, with a logger that keeps ``train()``'s records in memory."""
    with warnings.catch_warnings():  # the warning about a partial last minibatch, which the test wants
        warnings.simplefilter("ignore")
        model = PPO(
            "MultiInputPolicy",
            BatchEnv(batch, num_classes, levels, grid),
            learning_rate=lambda remaining: config.lr * remaining**config.lr_power,
            n_steps=config.n_steps,
            batch_size=config.minibatch,
            n_epochs=config.epochs,
            gamma=config.gamma,
            gae_lambda=config.gae_lambda,
            clip_range=config.clip,
            ent_coef=config.ent_coef,
            vf_coef=config.vf_coef,
            max_grad_norm=config.max_grad_norm,
            normalize_advantage=config.normalize_advantage,
            policy_kwargs={
                "features_extractor_class": AuthorsCNNExtractor,
                "features_extractor_kwargs": {"features_dim": 256, "num_class": num_classes},
            },
            device="cpu",
        )
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model
