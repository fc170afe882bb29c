"""RL-Mix's own behaviour (the family's shared behaviour: ``test_mixer_family.py``; the PPO agent:
``tests/rl/``): the mix is ``rmix`` with the agent's levels, the observation and the reward equal float64
transcriptions of their definitions, the training step's wiring, state, and bad use."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import rmix_fast
from rmix_fast.losses import SoftTargetCrossEntropy
from rmix_fast.rl import PPOConfig, observe, saliency_reward
from rmix_fast.sampling import paper_levels
from tests.helpers.cases import BACKENDS, DEVICE
from tests.helpers.mixer_cases import K, batch, clean_logits, make
from tests.helpers.toy_task import ToyCNN

SMALL_PPO = PPOConfig(n_steps=3, minibatch=2, epochs=2)


class FixedLevels(nn.Module):
    """A stub policy: sample b always picks ``levels[b]`` (all other logits -inf), value 0."""

    def __init__(self, levels: list[int], num_levels: int = 10) -> None:
        super().__init__()
        self.levels, self.num_levels = levels, num_levels
        self.unused = nn.Parameter(torch.zeros(1))  # the agent's optimizer needs a parameter

    def forward(self, saliency: Tensor, logits: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        N, B = saliency.shape[:2]
        out = torch.full((N, B, self.num_levels), -torch.inf, device=saliency.device)
        out[:, torch.arange(B), torch.tensor(self.levels[:B])] = 0.0
        return out + 0 * self.unused, torch.zeros(N, device=saliency.device) + 0 * self.unused


# ------------------------------------------------------------------------------------------ the mix itself
@pytest.mark.parametrize("backend", BACKENDS)
def test_with_a_stub_policy_the_mix_is_rmix_with_its_levels(backend):
    x, y, grad = batch()
    chosen = [0, 3, 9, 5, 1, 7]
    mixer = make(rmix_fast.RLMix, backend=backend, policy=FixedLevels(chosen)).to(DEVICE)
    x_mix, y_soft = mixer(x, y, grad, logits=clean_logits(x))
    p = mixer.last_params
    assert p.actions.tolist() == chosen
    q = paper_levels(10).to(torch.float32)[torch.tensor(chosen)].to(DEVICE)
    assert torch.equal(p.q, q)
    want, want_lam_eff, want_mask = rmix_fast.rmix(
        x, grad, perm=p.perm, lam=p.lam, q=q, grid=p.grid, backend=backend, return_mask=True
    )
    assert torch.equal(x_mix.detach(), want) and torch.equal(p.lam_eff, want_lam_eff) and torch.equal(p.mask, want_mask)
    targets = rmix_fast.soft_targets(y, K)
    assert torch.equal(y_soft, torch.lerp(targets[p.perm], targets, want_lam_eff.unsqueeze(1)))
    # p, lam and the partner are R-Mix's draws: an RMix on the same seed draws the same
    rmix_mixer = make(rmix_fast.RMix, backend=backend)
    rmix_mixer(x, y, grad)
    r = rmix_mixer.last_params
    assert p.grid == r.grid and torch.equal(p.perm, r.perm) and torch.equal(p.lam, r.lam)


def test_the_mixed_images_carry_the_gradient_to_x_when_x_requires_grad():
    x, y, grad = batch()
    x.requires_grad_(True)
    mixer = make(rmix_fast.RLMix).to(DEVICE)
    x_mix, _ = mixer(x, y, grad, logits=clean_logits(x))
    x_mix.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x_mix.grad is not None  # retained for the reward
    mixer.after_backward()
    assert mixer.agent.buffer.pos == 1


# --------------------------------------------------------------------- observation and reward, transcribed
def _pooled64(grad: Tensor, g: int) -> Tensor:
    """avgpool(sqrt(mean_c grad^2), cell) in float64, written out cell by cell."""
    B, _, H, W = grad.shape
    s = grad.double().square().mean(1).sqrt()
    ch, cw = H // g, W // g
    out = torch.empty(B, g, g, dtype=torch.float64)
    for b in range(B):
        for i in range(g):
            for j in range(g):
                out[b, i, j] = s[b, i * ch : (i + 1) * ch, j * cw : (j + 1) * cw].mean()
    return out


def _cosine64(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0


@pytest.mark.parametrize("B", [1, 5])
def test_the_observation_is_the_normalised_pooled_rms_saliency_and_the_logits(B):
    g = torch.Generator().manual_seed(B)
    grad = torch.randn(B, 3, 16, 24, generator=g)
    grad[0, :, :8] = 0  # a half-zero sample
    if B > 1:
        grad[1] = 0  # an all-zero sample: the uniform map, not NaN
    logits = torch.randn(B, K, generator=g)
    obs = observe(grad, logits, 8)
    pooled = _pooled64(grad, 8)
    torch.testing.assert_close(obs.pooled.double(), pooled, rtol=1e-6, atol=1e-9)
    want = pooled / pooled.sum(dim=(1, 2), keepdim=True)
    if B > 1:
        want[1] = 1 / 64
    torch.testing.assert_close(obs.saliency.double(), want, rtol=1e-6, atol=1e-9)
    assert torch.equal(obs.logits, logits) and obs.logits.dtype == torch.float32


@pytest.mark.parametrize("B", [1, 4])
def test_the_reward_is_the_cosine_of_the_batch_flattened_pooled_maps(B):
    g = torch.Generator().manual_seed(10 + B)
    clean, mixed = torch.randn(B, 3, 16, 16, generator=g), torch.randn(B, 3, 16, 16, generator=g)
    obs = observe(clean, torch.zeros(B, K), 8)
    got = saliency_reward(obs, mixed)
    assert got.shape == () and got.dtype == torch.float32
    want = _cosine64(_pooled64(clean, 8), _pooled64(mixed, 8))
    assert abs(float(got) - want) < 1e-6
    # one vector for the batch: a sample with large gradients weighs more than a per-sample mean would give
    assert abs(float(saliency_reward(obs, clean)) - 1.0) < 1e-6
    # a zero gradient on either side, or an overflowed one, is 0, never NaN
    assert float(saliency_reward(obs, torch.zeros_like(mixed))) == 0.0
    assert float(saliency_reward(observe(torch.zeros_like(clean), torch.zeros(B, K), 8), mixed)) == 0.0
    inf = mixed.clone()
    inf[0, 0, 0, 0] = torch.inf
    assert float(saliency_reward(obs, inf)) == 0.0


# ---------------------------------------------------------------------------------- the training step
def _train_step(model, mixer, x, y):
    grad, clean = rmix_fast.input_gradient(model, x, y, return_logits=True)
    x_mix, y_soft = mixer(x, y, grad, logits=clean)
    SoftTargetCrossEntropy()(model(x_mix), y_soft).backward()
    return grad, clean, x_mix


def test_a_step_records_the_observation_the_levels_and_the_reward_of_its_own_gradients():
    g = torch.Generator().manual_seed(0)
    model = ToyCNN(4)
    x, y = torch.rand(6, 3, 16, 16, generator=g), torch.randint(4, (6,), generator=g)
    mixer = rmix_fast.RLMix(4, generator=torch.Generator().manual_seed(0), ppo=SMALL_PPO)
    grad, clean, x_mix = _train_step(model, mixer, x, y)
    assert x_mix.requires_grad and x_mix.grad is not None
    grad_mix = x_mix.grad.clone()
    mixer.after_backward()
    buf = mixer.agent.buffer
    assert buf.pos == 1 and x_mix.grad is None  # released
    obs = observe(grad, clean, 8)
    assert torch.equal(buf.saliency[0], obs.saliency) and torch.equal(buf.logits[0], obs.logits)
    assert torch.equal(buf.actions[0], mixer.last_params.actions) and bool(buf.valid[0].all())
    assert torch.equal(buf.rewards[0], saliency_reward(obs, grad_mix))
    mixer.end_epoch()
    assert float(buf.dones[0]) == 1.0
    stats = mixer.epoch_stats()
    assert stats["rl_reward"] == pytest.approx(float(buf.rewards[0]))
    assert stats["rl_mean_q"] == pytest.approx(float(mixer.last_params.q.double().mean()))
    assert stats["rl_updates"] == 0 and mixer.epoch_stats() == {}  # read once an epoch


def test_a_mix_no_backward_reached_is_dropped_and_a_missing_after_backward_is_an_error():
    x, y, grad = batch()
    mixer = make(rmix_fast.RLMix, ppo=SMALL_PPO).to(DEVICE)
    mixer(x, y, grad, logits=clean_logits(x))
    mixer(x, y, grad, logits=clean_logits(x))  # the first one was never trained on: dropped
    assert mixer.agent.buffer.pos == 0
    x_mix, _ = mixer(x, y, grad, logits=clean_logits(x))
    x_mix.sum().backward()
    with pytest.raises(RuntimeError, match="after_backward"):
        mixer(x, y, grad, logits=clean_logits(x))
    mixer.after_backward()
    assert mixer.agent.buffer.pos == 1
    stats = mixer.epoch_stats()
    assert stats["rl_mean_q"] == pytest.approx(float(mixer.last_params.q.double().mean()))  # one step counted


def test_without_learning_the_policy_acts_and_nothing_is_recorded():
    x, y, grad = batch()
    frozen = make(rmix_fast.RLMix, learn=False).to(DEVICE)
    x_mix, _ = frozen(x, y, grad, logits=clean_logits(x))
    assert not x_mix.requires_grad and frozen.agent.buffer is None
    frozen.after_backward()  # nothing pending: a no-op
    learning = make(rmix_fast.RLMix).to(DEVICE)
    with torch.no_grad():
        x_mix, _ = learning(x, y, grad, logits=clean_logits(x))
    assert not x_mix.requires_grad and learning.agent.buffer is None


def test_state_dict_resumes_the_agent_exactly():
    g = torch.Generator().manual_seed(1)
    model = ToyCNN(4)
    x, y = torch.rand(5, 3, 16, 16, generator=g), torch.randint(4, (5,), generator=g)

    def mixer() -> rmix_fast.RLMix:
        return rmix_fast.RLMix(4, generator=torch.Generator().manual_seed(2), ppo=SMALL_PPO)

    a = mixer()
    for _ in range(5):  # 3 steps fill the rollout; the 4th updates first, then 2 steps into the next rollout
        _train_step(model, a, x, y)
        a.after_backward()
    assert a.agent.n_updates == 1 and a.agent.buffer.pos == 2
    b = mixer()
    b.load_state_dict(a.state_dict())
    b.generator.set_state(a.generator.get_state())
    for _ in range(3):  # through the next update
        _, _, ma = _train_step(model, a, x, y)
        a.after_backward()
        _, _, mb = _train_step(model, b, x, y)
        b.after_backward()
        assert torch.equal(a.last_params.actions, b.last_params.actions) and torch.equal(ma, mb)
    assert a.agent.n_updates == b.agent.n_updates == 2
    for pa, pb in zip(a.agent.policy.parameters(), b.agent.policy.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_a_restored_agent_reports_the_last_update_as_the_saved_one():
    # rmix-train saves between epochs: an epoch after the checkpoint that does not update reports the last
    # update's losses in both the uninterrupted and the resumed run
    g = torch.Generator().manual_seed(1)
    model = ToyCNN(4)
    x, y = torch.rand(5, 3, 16, 16, generator=g), torch.randint(4, (5,), generator=g)

    def mixer() -> rmix_fast.RLMix:
        return rmix_fast.RLMix(4, generator=torch.Generator().manual_seed(2), ppo=SMALL_PPO)

    a = mixer()
    for _ in range(4):  # the 4th step updates
        _train_step(model, a, x, y)
        a.after_backward()
    a.end_epoch()
    first = a.epoch_stats()
    assert first["rl_updates"] == 1 and "rl_policy_loss" in first
    b = mixer()
    b.load_state_dict(a.state_dict())
    b.generator.set_state(a.generator.get_state())
    for m in (a, b):  # an epoch of 2 steps: no update
        for _ in range(2):
            _train_step(model, m, x, y)
            m.after_backward()
        m.end_epoch()
    stats_a, stats_b = a.epoch_stats(), b.epoch_stats()
    assert stats_b == stats_a and stats_b["rl_policy_loss"] == first["rl_policy_loss"]


# ------------------------------------------------------------------------------------------------ bad use
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"obs_grid": 0}, "obs_grid must be"),
        ({"policy": "mlp"}, "policy must be"),
        ({"policy": "batch-channels"}, "needs the fixed batch size"),
        ({"policy": "batch-channels", "batch": 6, "obs_grid": 2}, "obs_grid >= 3"),
        ({"ppo": {"n_steps": 10}}, "config must be a PPOConfig"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rmix_fast.RLMix(K, **kwargs)


def test_bad_calls():
    x, y, grad = batch()
    mixer = make(rmix_fast.RLMix).to(DEVICE)
    with pytest.raises(ValueError, match=r"RLMix needs logits=\(B, 5\)"):
        mixer(x, y, grad)
    with pytest.raises(ValueError, match=r"RLMix needs logits=\(B, 5\).*got \(6, 4\)"):
        mixer(x, y, grad, logits=torch.zeros(6, 4))
    with pytest.raises(ValueError, match="RLMix needs grad"):
        mixer(x, y, logits=clean_logits(x))
    with pytest.raises(ValueError, match="obs_grid must be an int >= 1 dividing H=12"):
        mixer(x[..., :12, :12], y, grad[..., :12, :12], logits=clean_logits(x))
    with pytest.raises(ValueError, match="built for batches of 6"):
        make(rmix_fast.RLMix, policy="batch-channels", batch=6)(x[:4], y[:4], grad[:4], logits=clean_logits(x[:4]))
    elsewhere = make(rmix_fast.RLMix).to("meta")
    with pytest.raises(ValueError, match=r"move it with mixer\.to"):
        elsewhere(x, y, grad, logits=clean_logits(x))
