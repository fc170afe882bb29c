"""RL-Mix's PPO (``rmix_fast.rl``): one full update against stable-baselines3's ``PPO.train()``, GAE and the
losses against float64 transcriptions (padded steps included), the inverse-CDF draws, a toy bandit it must
learn, its state round trip, its argument checks and its learning-rate decay."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from rmix_fast.rl import (
    BatchChannelsPolicy,
    Observation,
    PPOAgent,
    PPOConfig,
    SamplePolicy,
    gae,
    observe,
    ppo_losses,
    sample_actions,
)
from rmix_fast.rl.ppo import _joint


def _observations(batches: list[int], num_classes: int, grid: int, generator: torch.Generator) -> list[Observation]:
    """One observation per step, from random input gradients and logits through ``observe`` (as RLMix does)."""
    return [
        observe(
            torch.randn(b, 3, 2 * grid, 2 * grid, generator=generator),
            3 * torch.randn(b, num_classes, generator=generator),
            grid,
        )
        for b in batches
    ]


def _run_rollout(
    agent: PPOAgent, obs: list[Observation], rewards: Tensor, ends: set[int], generator: torch.Generator
) -> list[Tensor]:
    """``act`` / ``record`` (/ ``end_episode`` after the steps in ``ends``) over the steps; the actions."""
    actions = []
    for t, o in enumerate(obs):
        actions.append(agent.act(o, torch.rand(o.batch, generator=generator)))
        agent.record(rewards[t])
        if t in ends:
            agent.end_episode()
    return actions


# -- 1. one full update against stable-baselines3 ---------------------------------------------------------------
B, K, L, G = 3, 5, 10, 8  # batch, classes, levels, observation grid
N_STEPS, MINIBATCH, EPOCHS = 9, 4, 3  # minibatches of 4, 4 and 1 steps: a partial one, and one not normalised
TOTAL_STEPS = 40  # so the update runs at lr * (1 - 9/40)**0.9, not at lr


@pytest.mark.parametrize("ends", [(3,), (3, N_STEPS - 1)], ids=["episode-end-mid", "and-at-the-last-step"])
def test_update_equals_stable_baselines3(ends: tuple[int, ...], monkeypatch: pytest.MonkeyPatch):
    """A rollout recorded by our agent with the authors' network, then one update by ours and by SB3's
    ``PPO.train()`` from the same weights, rollout and minibatch orders: the same weights after it (1e-6).

    In float32 on both sides: SB3 casts observations to float32 (``preprocess_obs``), so it cannot run in
    float64; the update's rounding differences stay near 1e-7. lr 3e-3 rather than 3e-4 and an entropy bonus, so
    that every term moves the weights and the later epochs clip (both asserted below)."""
    pytest.importorskip("stable_baselines3")
    from tests.helpers.sb3_ppo import copy_weights_into_sb3, make_sb3_ppo, sb3_name

    config = PPOConfig(n_steps=N_STEPS, minibatch=MINIBATCH, epochs=EPOCHS, ent_coef=0.01, lr=3e-3)
    torch.manual_seed(0)
    policy = BatchChannelsPolicy(batch=B, num_classes=K, levels=L, obs_grid=G)
    model = make_sb3_ppo(config, B, K, L, G)
    copy_weights_into_sb3(policy, model)
    initial = {n: p.detach().clone() for n, p in policy.named_parameters()}

    agent = PPOAgent(policy, config, total_steps=TOTAL_STEPS)
    g = torch.Generator().manual_seed(1)
    obs = _observations([B] * (N_STEPS + 1), K, G, g)
    rewards = torch.randn(N_STEPS, generator=g)
    _run_rollout(agent, obs[:N_STEPS], rewards, set(ends), g)
    buf = agent.buffer
    assert buf.full and buf.valid.all()
    rollout = {k: getattr(buf, k).clone() for k in buf.FIELDS}  # the next act overwrites step 0
    assert rollout["dones"].nonzero().flatten().tolist() == list(ends)

    # SB3's rollout buffer holds the same steps; episode_starts[t] = "obs t starts an episode" = dones[t - 1]
    sal, lg, act = (rollout[k].numpy() for k in ("saliency", "logits", "actions"))
    starts = np.concatenate([[1.0], rollout["dones"][:-1].numpy()])
    rb = model.rollout_buffer
    rb.reset()
    for t in range(N_STEPS):
        rb.add(
            {"saliency": sal[t][None], "logits": lg[t][None]},
            act[t][None],
            rollout["rewards"][t : t + 1].numpy(),
            starts[t : t + 1],
            rollout["values"][t].reshape(1, 1),
            rollout["log_probs"][t].reshape(1),
        )

    # before the update, SB3's policy evaluates the rollout as ours did when acting, step by step
    obs_t = {"saliency": rollout["saliency"], "logits": rollout["logits"]}
    with torch.no_grad():
        values, log_prob, entropy = model.policy.evaluate_actions(obs_t, rollout["actions"].float())
        action_logits, our_values = policy(rollout["saliency"], rollout["logits"], rollout["valid"])
        our_log_prob, our_entropy = _joint(action_logits, rollout["actions"], rollout["valid"])
        # the bootstrap value, as SB3's collect_rollouts takes it
        last_value = model.policy.predict_values({"saliency": obs[-1].saliency[None], "logits": obs[-1].logits[None]})
    # (SB3's Categorical normalises logits by logsumexp, ours is log_softmax: the joint log probabilities and
    # entropies, near -3 log(10) and 3 log(10), differ by float32 ulps there, 4.8e-7 each; measured 2)
    torch.testing.assert_close(values.flatten(), rollout["values"], rtol=0, atol=1e-6)
    torch.testing.assert_close(values.flatten(), our_values, rtol=0, atol=1e-6)
    torch.testing.assert_close(log_prob, rollout["log_probs"], rtol=0, atol=4e-6)
    torch.testing.assert_close(log_prob, our_log_prob, rtol=0, atol=4e-6)
    torch.testing.assert_close(entropy, our_entropy, rtol=0, atol=4e-6)

    # GAE: SB3's compute_returns_and_advantage on the same values against ours
    rb.compute_returns_and_advantage(last_values=last_value, dones=rollout["dones"][-1:].numpy().astype(bool))
    advantages, returns = gae(
        rollout["rewards"], rollout["values"], rollout["dones"], last_value.reshape(()),
        gamma=config.gamma, gae_lambda=config.gae_lambda,
    )  # fmt: skip
    torch.testing.assert_close(advantages, torch.from_numpy(rb.advantages).flatten(), rtol=0, atol=1e-6)
    torch.testing.assert_close(returns, torch.from_numpy(rb.returns).flatten(), rtol=0, atol=1e-6)

    # the update: ours through the next act (the rollout is full), SB3's train(); the same minibatch orders
    # (each epoch a permutation of the 9 steps from one seeded generator) and the same learning rate
    shuffle_seed, permutations = 7, []
    sb3_shuffle = torch.Generator().manual_seed(shuffle_seed)

    def permutation(n: int) -> np.ndarray:
        permutations.append(n)
        return torch.randperm(n, generator=sb3_shuffle).numpy()

    monkeypatch.setattr(np.random, "permutation", permutation)
    model._current_progress_remaining = 1.0 - N_STEPS / TOTAL_STEPS
    model.train()
    assert permutations == [N_STEPS] * EPOCHS
    agent.act(obs[-1], torch.rand(B, generator=g), generator=torch.Generator().manual_seed(shuffle_seed))
    assert agent.n_updates == 1 and agent.buffer.pos == 0  # the new step, at row 0, awaits its reward
    lr = config.lr * (1 - N_STEPS / TOTAL_STEPS) ** config.lr_power
    assert agent.optimizer.param_groups[0]["lr"] == model.policy.optimizer.param_groups[0]["lr"] == lr

    theirs = dict(model.policy.named_parameters())
    diffs = {n: (p - theirs[sb3_name(n)]).abs().max().item() for n, p in policy.named_parameters()}
    moved = {n: (p - initial[n]).abs().max().item() for n, p in policy.named_parameters()}
    assert max(diffs.values()) <= 1e-6, diffs
    # not vacuous: every parameter moved by far more than the tolerance
    assert min(moved.values()) > 1e-4, moved

    # the logged means of the minibatches' losses agree too (approx_kl: SB3 logs its last epoch's only)
    logged = model.logger.name_to_value
    for ours, key in (("policy_loss", "policy_gradient_loss"), ("value_loss", "value_loss"),
                      ("entropy_loss", "entropy_loss"), ("clip_fraction", "clip_fraction")):  # fmt: skip
        assert agent.last_stats[ours].item() == pytest.approx(logged[f"train/{key}"], rel=1e-5, abs=1e-6), ours
    assert 0 < logged["train/clip_fraction"] < 1


# -- 2. GAE and the losses against float64 transcriptions -------------------------------------------------------
def _gae_by_hand(
    rewards: list[float], values: list[float], dones: list[float], last_value: float, gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """GAE by its definition rather than its recursion: A_t = sum_k (gamma lam)^(k-t) delta_k over the steps k
    from t to the end of t's episode (or of the rollout), delta_k = r_k + gamma V_{k+1} (1 - done_k) - V_k."""
    n = len(rewards)
    nxt = [*values[1:], last_value]
    delta = [rewards[k] + gamma * nxt[k] * (1 - dones[k]) - values[k] for k in range(n)]
    advantages = []
    for t in range(n):
        a, k = 0.0, t
        while k < n:
            a += (gamma * lam) ** (k - t) * delta[k]
            if dones[k]:
                break
            k += 1
        advantages.append(a)
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


@pytest.mark.parametrize("ends", [(), (2,), (0, 4, 5, 11), tuple(range(12))])
def test_gae_equals_its_definition_in_float64(ends: tuple[int, ...]):
    g = torch.Generator().manual_seed(len(ends))
    n = 12
    rewards, values = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    dones = torch.zeros(n, dtype=torch.float64)
    dones[list(ends)] = 1.0
    last_value = torch.tensor(0.7, dtype=torch.float64)
    gamma, lam = 0.9, 0.8  # not the defaults, so that neither can hide in a constant
    want_adv, want_ret = _gae_by_hand(rewards.tolist(), values.tolist(), dones.tolist(), 0.7, gamma, lam)
    adv, ret = gae(rewards, values, dones, last_value, gamma=gamma, gae_lambda=lam)
    assert adv.dtype == torch.float64
    torch.testing.assert_close(adv, torch.tensor(want_adv, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, torch.tensor(want_ret, dtype=torch.float64), rtol=0, atol=1e-12)
    # float32 as the agent runs it: within float32 rounding of the float64 result
    adv32, ret32 = gae(rewards.float(), values.float(), dones.float(), last_value.float(), gamma=gamma, gae_lambda=lam)
    torch.testing.assert_close(adv32.double(), torch.tensor(want_adv, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(ret32.double(), torch.tensor(want_ret, dtype=torch.float64), rtol=0, atol=1e-5)


STEP_BATCHES = [3, 5, 2, 5, 1, 4]  # the buffer widens to 5 at step 1; steps 0, 2, 4 and 5 are padded


def _padded_rollout() -> tuple[PPOAgent, SamplePolicy]:
    """A full rollout of steps with different batch sizes, recorded by a float32 agent with ``SamplePolicy``."""
    torch.manual_seed(3)
    policy = SamplePolicy(num_classes=K, levels=L, obs_grid=G)
    agent = PPOAgent(policy, PPOConfig(n_steps=len(STEP_BATCHES), minibatch=2))
    g = torch.Generator().manual_seed(4)
    _run_rollout(agent, _observations(STEP_BATCHES, K, G, g), torch.randn(len(STEP_BATCHES), generator=g), {2}, g)
    return agent, policy


def _losses_by_hand(
    policy: nn.Module, batch: dict[str, Tensor], clip: float, ent_coef: float, vf_coef: float, normalize: bool
) -> dict[str, Tensor]:
    """PPO's losses step by step and sample by sample: each valid sample alone through the policy (so neither
    padding nor the batched forward can enter), its log-softmax written out, the joint action's log
    probability and entropy the sums over the step's samples, the step's value the mean of its samples'."""
    log_probs, entropies, values = [], [], []
    for t in range(batch["valid"].shape[0]):
        lp_t, h_t, v_t = 0.0, 0.0, []
        for b in batch["valid"][t].nonzero().flatten().tolist():
            one = torch.ones(1, 1, dtype=torch.bool)
            z, v = policy(batch["saliency"][t, b][None, None], batch["logits"][t, b][None, None], one)
            z = z.reshape(-1)
            m = z.max()
            log_softmax = z - m - torch.log(torch.exp(z - m).sum())
            lp_t = lp_t + log_softmax[batch["actions"][t, b]]
            h_t = h_t - (torch.exp(log_softmax) * log_softmax).sum()
            v_t.append(v.reshape(()))
        log_probs.append(lp_t)
        entropies.append(h_t)
        values.append(sum(v_t) / len(v_t))
    log_prob, entropy, value = torch.stack(log_probs), torch.stack(entropies), torch.stack(values)
    a = batch["advantages"]
    n = a.shape[0]
    if normalize and n > 1:
        mean = a.sum() / n
        std = torch.sqrt(((a - mean) ** 2).sum() / (n - 1))  # unbiased, as torch's std and SB3
        a = (a - mean) / (std + 1e-8)
    ratio = torch.exp(log_prob - batch["log_probs"])
    surrogate = [min(a[i] * ratio[i], a[i] * min(max(ratio[i], 1 - clip), 1 + clip)) for i in range(n)]
    policy_loss = -sum(surrogate) / n
    value_loss = sum((batch["returns"][i] - value[i]) ** 2 for i in range(n)) / n
    entropy_loss = -entropy.sum() / n
    return {
        "loss": policy_loss + ent_coef * entropy_loss + vf_coef * value_loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy_loss": entropy_loss,
        "approx_kl": ((ratio - 1) - torch.log(ratio)).mean(),
        "clip_fraction": torch.tensor(sum(abs(r.item() - 1) > clip for r in ratio) / n, dtype=torch.float64),
    }


@pytest.mark.parametrize(
    "steps, normalize, sign",
    [(list(range(6)), True, 1), (list(range(6)), True, -1), ([4, 0, 2, 5], True, 1), (list(range(6)), False, 1),
     ([2], True, 1)],
    ids=["all", "all-negated", "minibatch", "unnormalised", "one-step"],
)  # fmt: skip
def test_losses_equal_a_float64_transcription_with_padded_steps(steps: list[int], normalize: bool, sign: int):
    agent, policy = _padded_rollout()
    buf = agent.buffer
    assert buf.full and buf.width == max(STEP_BATCHES)
    assert buf.valid.sum(1).tolist() == STEP_BATCHES
    # the new policy differs from the one that acted (ratios away from 1, some clipped) and runs in float64
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))  # ratios 0.86 to 1.09: 4 of 6 clipped at 0.05, both sides
    policy.double()
    last_value = torch.tensor(0.3)
    advantages, returns = gae(buf.rewards, buf.values, buf.dones, last_value, gamma=0.99, gae_lambda=0.95)
    advantages = sign * advantages  # with both signs each side of the clip range binds somewhere
    full = {
        "saliency": buf.saliency, "logits": buf.logits, "valid": buf.valid, "actions": buf.actions,
        "log_probs": buf.log_probs, "advantages": advantages, "returns": returns,
    }  # fmt: skip
    batch = {k: (v[steps].double() if v.is_floating_point() else v[steps]) for k, v in full.items()}
    clip, ent_coef, vf_coef = 0.05, 0.03, 0.7
    got = ppo_losses(policy, batch, clip=clip, ent_coef=ent_coef, vf_coef=vf_coef, normalize_advantage=normalize)
    want = _losses_by_hand(policy, batch, clip, ent_coef, vf_coef, normalize)
    for k in want.keys() - {"clip_fraction"}:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-10, msg=lambda m, k=k: f"{k}: {m}")
    # the clip fraction is a float32 mean of a count whatever the policy's dtype
    assert got["clip_fraction"].item() == pytest.approx(want["clip_fraction"].item(), rel=1e-7)
    # the gradients too
    params = list(policy.parameters())
    grads = torch.autograd.grad(got["loss"], params)
    want_grads = torch.autograd.grad(want["loss"], params)
    for p, a, b in zip(policy.named_parameters(), grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=p[0])
    if len(steps) == 6:  # both branches of the clipped surrogate are taken
        assert 0 < got["clip_fraction"].item() < 1

    # the padding is junk-proof: other contents in the invalid slots change nothing, bit for bit
    junk = dict(batch)
    pad = ~batch["valid"]
    junk["saliency"] = torch.where(pad[..., None, None], torch.rand_like(batch["saliency"]), batch["saliency"])
    junk["logits"] = torch.where(pad[..., None], 50 * torch.randn_like(batch["logits"]), batch["logits"])
    junk["actions"] = torch.where(pad, torch.randint_like(batch["actions"], L), batch["actions"])
    again = ppo_losses(policy, junk, clip=clip, ent_coef=ent_coef, vf_coef=vf_coef, normalize_advantage=normalize)
    for k in got:
        assert torch.equal(again[k], got[k]), k


def test_padding_leaves_the_acting_time_record_unchanged():
    """What ``act`` recorded for a step of a narrower batch (in a buffer wider than it) is that batch's own joint
    log probability and value, and the padded buffer row evaluates to the same."""
    agent, policy = _padded_rollout()
    buf = agent.buffer
    with torch.no_grad():
        action_logits, values = policy(buf.saliency, buf.logits, buf.valid)
        log_prob, entropy = _joint(action_logits, buf.actions, buf.valid)
        for t, b in enumerate(STEP_BATCHES):
            alone = torch.ones(1, b, dtype=torch.bool)
            z, v = policy(buf.saliency[t : t + 1, :b], buf.logits[t : t + 1, :b], alone)
            lp, h = _joint(z, buf.actions[t : t + 1, :b], alone)
            torch.testing.assert_close(lp[0], buf.log_probs[t], rtol=0, atol=1e-6)
            torch.testing.assert_close(v[0], buf.values[t], rtol=0, atol=1e-6)
            torch.testing.assert_close(log_prob[t], lp[0], rtol=0, atol=1e-6)
            torch.testing.assert_close(entropy[t], h[0], rtol=0, atol=1e-6)
            torch.testing.assert_close(values[t], v[0], rtol=0, atol=1e-6)


# -- 3. the draws ---------------------------------------------------------------------------------------------
U_TOP = 1.0 - 2.0**-24  # the largest float32 below 1, which torch.rand can draw


def test_sample_actions_inverts_the_cdf():
    inf = math.inf
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-inf, 0.0, 0.0, 0.0], [0.0, -inf, -inf, 0.0], [0.0, 0.0, 0.0, -inf]])
    # u in [cdf[j-1], cdf[j]) draws level j: the first level whose CDF exceeds u
    for u, want in ((0.0, [0, 1, 0, 0]), (0.25, [1, 1, 0, 0]), (0.5, [2, 2, 3, 1]), (0.7, [2, 3, 3, 2])):
        assert sample_actions(logits, torch.full((4,), u)).tolist() == want, u
    # a level of probability 0 is never drawn, not even at u = 0 nor just below a step of the CDF
    assert sample_actions(torch.tensor([-inf, -inf, 1.0]), torch.tensor(0.0)).item() == 2
    assert sample_actions(torch.tensor([0.0, -inf, 0.0]), torch.tensor(0.4999999)).item() == 0
    assert sample_actions(torch.tensor([1.0, -200.0, 2.0]), torch.tensor(0.0)).item() == 0  # exp underflows to 0
    out = sample_actions(torch.zeros(2, 3, 5), torch.zeros(2, 3))
    assert out.shape == (2, 3) and out.dtype == torch.int64


def test_sample_actions_near_one_draws_the_last_level_of_nonzero_probability():
    """At u just below 1 the draw is the last level with probability > 0, even where the CDF's float32 sum
    ends below u (the trailing zero-probability levels must not take that gap)."""
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 10, generator=g)
    last = torch.randint(1, 10, (500,), generator=g)  # levels after it have probability 0
    rows = torch.arange(500)
    logits[rows, last] = logits.amax(-1)  # and it has a probability >= 1/10, so u = U_TOP falls on it
    logits[torch.arange(10) > last[:, None]] = -math.inf
    logits[:, 9] = torch.where(last == 9, logits[:, 9], -1000.0)  # a finite logit whose exp underflows to 0
    assert (torch.softmax(logits, -1)[torch.arange(10) > last[:, None]] == 0).all()
    drawn = sample_actions(logits, torch.full((500,), U_TOP))
    assert torch.equal(drawn, last)


def test_sample_actions_frequencies_match_the_softmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.tensor([1.0, -0.5, 0.0, 2.0, -math.inf, 0.3, -1.0])
    p = torch.softmax(logits, -1).double()
    n = 200_000
    drawn = sample_actions(logits.expand(n, -1), torch.rand(n, generator=g))
    freq = torch.bincount(drawn, minlength=7).double() / n
    stderr = (p * (1 - p) / n).sqrt()
    assert freq[4] == 0
    assert ((freq - p).abs() <= 4 * stderr + 1e-12).all(), (freq, p)


# -- 4. it learns ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 4])
def test_learns_a_bandit(batch: int):
    """Fixed observations, reward = the share of the batch at level 0: the agent must end up drawing level 0.
    A bandit, so every step is its own episode (advantage = reward - value). lr 3e-3 (ten times the default)
    so that 240 steps (15 updates of 20 minibatches, about a second) are enough; at 3e-4 it takes thousands."""
    torch.manual_seed(0)
    agent = PPOAgent(SamplePolicy(num_classes=5, levels=10, obs_grid=4), PPOConfig(n_steps=16, minibatch=8, lr=3e-3))
    g = torch.Generator().manual_seed(100)
    obs = observe(torch.randn(batch, 3, 8, 8, generator=g), torch.randn(batch, 5, generator=g), 4)
    hits = []
    for _ in range(240):
        actions = agent.act(obs, torch.rand(batch, generator=g), g)
        reward = (actions == 0).float().mean()
        agent.record(reward)
        agent.end_episode()
        hits.append(reward)
    first, last = torch.stack(hits[:16]).mean().item(), torch.stack(hits[-16:]).mean().item()
    assert agent.n_updates == 240 // 16 - 1
    assert first < 0.5 < 0.9 < last, (first, last)


# -- 5. state -------------------------------------------------------------------------------------------------
def _agent(seed: int, config: PPOConfig | None = None) -> PPOAgent:
    torch.manual_seed(seed)
    return PPOAgent(SamplePolicy(num_classes=K, levels=L, obs_grid=G, features=32, hidden=16),
                    config or PPOConfig(n_steps=4, minibatch=3, epochs=2), total_steps=30)  # fmt: skip


def _round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """Through bytes, as a checkpoint goes (weights_only, torch.load's default). Loaded in process without it,
    the new agent would share the old one's tensors: Adam's moments (``Optimizer.load_state_dict`` keeps
    tensors already on the right device and dtype) and the rollout buffer, so the two could not continue apart."""
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


def test_state_round_trip_mid_rollout_continues_bit_for_bit():
    a, b = _agent(0), _agent(1)  # b starts from other weights: everything must come from the state
    g = torch.Generator().manual_seed(2)
    obs = _observations([3, 5, 2, 4, 4, 1, 3, 5, 2, 3, 4, 5, 1, 2], K, G, g)
    rewards = torch.randn(len(obs), generator=g)
    shuffle_a = torch.Generator().manual_seed(3)
    for t in range(6):  # a full rollout, an update (at step 4), and 2 steps of the next rollout
        a.act(obs[t], torch.rand(obs[t].batch, generator=g), shuffle_a)
        a.record(rewards[t])
        if t == 2:
            a.end_episode()
    assert a.n_updates == 1 and a.buffer.pos == 2 and a.optimizer.state
    b.load_state_dict(_round_trip(a.state_dict()))
    assert b.n_updates == 1 and b.num_timesteps == 6 and b.buffer.pos == 2
    assert b.buffer.width == a.buffer.width == 5
    shuffle_b = torch.Generator().manual_seed(3)
    shuffle_b.set_state(shuffle_a.get_state())
    for t in range(6, len(obs)):  # two more updates
        u = torch.rand(obs[t].batch, generator=g)
        assert torch.equal(a.act(obs[t], u, shuffle_a), b.act(obs[t], u, shuffle_b)), t
        a.record(rewards[t])
        b.record(rewards[t])
        if t == 9:
            a.end_episode()
            b.end_episode()
    assert a.n_updates == b.n_updates == 3
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if isinstance(p, Tensor):
            assert torch.equal(p, q), name
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for k, v in a.last_stats.items():
        assert torch.equal(v, b.last_stats[k]), k
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    for name in a.buffer.FIELDS:
        assert torch.equal(getattr(a.buffer, name), getattr(b.buffer, name)), name


def test_state_errors():
    a = _agent(0)
    g = torch.Generator().manual_seed(0)
    (o,) = _observations([3], K, G, g)
    a.act(o, torch.rand(3))
    with pytest.raises(RuntimeError, match="no reward yet"):
        a.act(o, torch.rand(3))
    with pytest.raises(RuntimeError, match="awaits its reward"):
        a.state_dict()
    a.record(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="no step to reward"):
        a.record(torch.tensor(1.0))
    with pytest.raises(ValueError, match="uniforms must have shape"):
        a.act(o, torch.rand(4))
    state = _round_trip(a.state_dict())
    other = _agent(0, PPOConfig(n_steps=4, minibatch=3, epochs=3))
    with pytest.raises(ValueError, match="ran with"):
        other.load_state_dict(state)
    with pytest.raises(RuntimeError, match="full rollout"):
        a.update(last_value=torch.tensor(0.0))
    with pytest.raises(TypeError, match="PPOConfig"):
        PPOAgent(SamplePolicy(num_classes=K), {"n_steps": 4})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n_steps": 0}, "n_steps"), ({"n_steps": 2.0}, "n_steps"), ({"n_steps": True}, "n_steps"),
        ({"minibatch": 0}, "minibatch"), ({"epochs": 0}, "epochs"),
        ({"n_steps": 8, "minibatch": 9}, r"minibatch \(9\)"),
        ({"clip": 0.0}, "clip"), ({"clip": -0.1}, "clip"), ({"gamma": 1.5}, "gamma"), ({"gamma": True}, "gamma"),
        ({"gae_lambda": -0.1}, "gae_lambda"), ({"lr": -1.0}, "lr"), ({"lr": 0.0}, "lr"), ({"lr": math.nan}, "lr"),
        ({"lr": math.inf}, "lr"), ({"lr": "1e-3"}, "lr"), ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"ent_coef": -0.01}, "ent_coef"), ({"vf_coef": False}, "vf_coef"), ({"lr_power": -1.0}, "lr_power"),
    ],
)  # fmt: skip
def test_config_rejects_bad_values(kwargs: dict[str, Any], field: str):
    with pytest.raises(ValueError, match=f"^{field}"):
        PPOConfig(**kwargs)


def test_config_accepts_the_edges():
    PPOConfig(n_steps=1, minibatch=1, epochs=1, gamma=0.0, gae_lambda=1.0, ent_coef=0.0, vf_coef=0.0, lr_power=0.0)
    PPOConfig(gamma=1.0, gae_lambda=0.0, lr=1, clip=1)  # ints where floats go


# -- 6. the learning rate -------------------------------------------------------------------------------------
def test_learning_rate_decays_to_zero_at_total_steps():
    config = PPOConfig(n_steps=4, minibatch=2, epochs=1, lr=2e-3)
    agent = PPOAgent(SamplePolicy(num_classes=K, features=16, hidden=8), config, total_steps=50)
    for t, want in ((0, 2e-3), (10, 2e-3 * 0.8**0.9), (25, 2e-3 * 0.5**0.9), (49, 2e-3 * 0.02**0.9), (50, 0.0)):
        agent.num_timesteps = t
        assert agent.learning_rate() == pytest.approx(want, rel=1e-12, abs=0), t
    agent.num_timesteps = 60  # past the end (a run extended without a new schedule): 0, not a complex number
    assert agent.learning_rate() == 0.0
    assert PPOAgent(SamplePolicy(num_classes=K), config).learning_rate() == 2e-3  # no total_steps: constant
    assert PPOAgent(SamplePolicy(num_classes=K), PPOConfig(lr_power=2.0), total_steps=10).learning_rate() == 3e-4

    # the update runs at the rate of the steps recorded before it
    agent.num_timesteps = 0
    g = torch.Generator().manual_seed(0)
    obs = _observations([2] * 5, K, G, g)
    for o in obs[:4]:
        agent.act(o, torch.rand(2, generator=g))
        agent.record(torch.tensor(0.5))
    agent.act(obs[4], torch.rand(2, generator=g))
    assert agent.n_updates == 1
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * (1 - 4 / 50) ** 0.9, rel=1e-12)
