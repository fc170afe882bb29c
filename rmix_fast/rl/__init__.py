"""RL-Mix's agent (R-Mix paper, section 5.2): a PPO policy that picks each sample's R-Mix percentile level.

``signals`` (the observation and the reward), ``policies`` (the actor-critic networks), ``rollout`` (the
device buffer and GAE) and ``ppo`` (the agent and its update). The mixer that uses them is
``rmix_fast.mixers.RLMix``.
"""

from rmix_fast.rl.policies import POLICIES, BatchChannelsPolicy, SamplePolicy
from rmix_fast.rl.ppo import PPOAgent, PPOConfig, ppo_losses, sample_actions
from rmix_fast.rl.rollout import RolloutBuffer, gae
from rmix_fast.rl.signals import Observation, cosine_reward, observe, saliency_reward

__all__ = [
    "POLICIES",
    "BatchChannelsPolicy",
    "Observation",
    "PPOAgent",
    "PPOConfig",
    "RolloutBuffer",
    "SamplePolicy",
    "cosine_reward",
    "gae",
    "observe",
    "ppo_losses",
    "saliency_reward",
    "sample_actions",
]
