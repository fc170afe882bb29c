"""The ``AdAutoMix`` mixer's contract (its step against the published one is tests/adautomix/test_step.py):
building on a model, the generic call, the state and an exact continuation from it, the loop's hooks, and
clear errors for bad arguments and models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rmix_fast.mixers import AdAutoMix
from rmix_fast.training.models import PixelClassifier, SmallCNN

K, B, SIDE = 5, 6, 16


def make(n: int = 3, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model = PixelClassifier(SmallCNN(K, 3, widths=(4, 6, 8)), [0.5] * 3, [0.25] * 3)
    mixer = AdAutoMix(K, n_sources=n, generator=torch.Generator().manual_seed(seed), **kwargs)
    mixer.attach(model, (3, SIDE, SIDE))
    mixer.set_total_steps(20)
    g = torch.Generator().manual_seed(seed + 1)
    return model, mixer, torch.rand(B, 3, SIDE, SIDE, generator=g), torch.randint(0, K, (B,), generator=g)


def train(model, mixer, optimizer, x, y, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        out = mixer.training_loss(model, x, y)
        out.loss.backward()
        optimizer.step()
        mixer.after_optimizer_step(model, lr=optimizer.param_groups[0]["lr"])
        losses.append(out.loss.item())
    return losses


def test_attach_builds_the_parts_from_the_model():
    model, mixer, *_ = make()
    assert mixer.feature_layer == "net.features.4" and mixer.scale == 4
    assert mixer.mask_generator.in_channels == 8 and mixer.head_one.in_features == 8
    assert all(not p.requires_grad for p in mixer.teacher.parameters())
    teacher = dict(mixer.teacher.module.named_parameters())
    assert all(torch.equal(teacher[n], p) for n, p in model.named_parameters())
    assert model.training  # the probe forward left the model's mode alone
    # the probe ran in eval mode: the model's BatchNorm statistics were not touched
    fresh = PixelClassifier(SmallCNN(K, 3, widths=(4, 6, 8)), [0.5] * 3, [0.25] * 3)
    for a, b in zip(model.buffers(), fresh.buffers(), strict=True):
        assert torch.equal(a, b)
    # the generator and the head train; the teacher's parameters are not the mixer's to optimise
    trained = {id(p) for group in mixer.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in [*mixer.mask_generator.parameters(), *mixer.head_one.parameters()]}


def test_the_generic_call_mixes_without_training():
    _, mixer, x, y = make()
    before = copy.deepcopy(mixer.state_dict())
    mixed, targets = mixer(x, y)
    assert mixed.shape == x.shape and targets.shape == (B, K)
    torch.testing.assert_close(targets.sum(1), torch.ones(B))
    assert mixer.iteration == 0 and mixer.last_params.applied
    after = mixer.state_dict()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after[key]), key


@pytest.mark.parametrize("n", [2, 3])
def test_state_round_trip_continues_exactly(n):
    model, mixer, x, y = make(n)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, mixer, optimizer, x, y, 3)
    state = copy.deepcopy(mixer.state_dict())
    model_state, optimizer_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    rng = copy.deepcopy(mixer.generator.get_state())
    expected = train(model, mixer, optimizer, x, y, 3)

    model2, mixer2, *_ = make(n, seed=7)  # other weights and draws, all replaced by the state
    model2.load_state_dict(model_state)
    mixer2.load_state_dict(state)
    mixer2.generator.set_state(rng)
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    optimizer2.load_state_dict(optimizer_state)
    assert mixer2.iteration == 3
    assert train(model2, mixer2, optimizer2, x, y, 3) == expected  # bit for bit
    for a, b in zip(mixer.state_dict().values(), mixer2.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_the_toggle_and_the_epoch_stats():
    model, mixer, x, y = make(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    flags = []
    for _ in range(4):
        out = mixer.training_loss(model, x, y)
        out.loss.backward()
        optimizer.step()
        mixer.after_optimizer_step(model, lr=0.1)
        flags.append(out.adversarial)
    assert flags == [True, False, True, False]
    mixer.end_epoch()
    stats = mixer.epoch_stats()
    assert set(stats) == {f"adautomix_{k}" for k in ("mix_q", "one_q", "mix_k", "cosine", "momentum")}
    assert stats["adautomix_momentum"] == mixer.momentum()
    assert 0 < stats["adautomix_mix_q"] < 10


def test_reused_teacher_logits_skip_the_source_passes():
    calls = []
    for reuse in (False, True):
        model, mixer, x, y = make(3, reuse_teacher_logits=reuse)
        handle = mixer.teacher.module.register_forward_hook(lambda m, i, o, reuse=reuse: calls.append(reuse))
        mixer.training_loss(model, x, y)
        handle.remove()
    # the clean batch and the generator's mix, plus one pass per source unless reused
    assert calls.count(False) == 2 + 3 and calls.count(True) == 2


class NoFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(3, K)

    def forward(self, x):
        return self.classifier(x.mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_sources": 1}, "n_sources"),
        ({"beta": 1.5}, "beta"),
        ({"mixup_ratio": -0.1}, "mixup_ratio"),
        ({"lam_margin": 0.5}, "lam_margin"),
        ({"ema_momentum": 0.9999, "ema_end_momentum": 0.999}, "ema_momentum"),
        ({"norm": "ln"}, "norm"),
        ({"mode": "bicubic"}, "mode"),
        ({"reduction": 0}, "reduction"),
        ({"lr": -1.0}, "lr"),
        ({"alpha": 0.0}, "alpha"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdAutoMix(K, **kwargs)


def test_bad_models_and_order_of_calls():
    mixer = AdAutoMix(K)
    x, y = torch.rand(2, 3, SIDE, SIDE), torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match="attach"):
        mixer.training_loss(nn.Identity(), x, y)
    with pytest.raises(TypeError, match="forward_features"):
        mixer.attach(NoFeatures(), (3, SIDE, SIDE))
    model = PixelClassifier(SmallCNN(K, 3, widths=(4, 6, 8)), [0.5] * 3, [0.25] * 3)
    with pytest.raises(ValueError, match="not a submodule"):
        AdAutoMix(K, feature_layer="net.nowhere").attach(model, (3, SIDE, SIDE))
    with pytest.raises(ValueError, match="divide"):  # a 3x3 map of a 14x14 image: no integer scale
        AdAutoMix(K).attach(model, (3, 14, 14))
    with pytest.raises(ValueError, match="image_shape"):
        AdAutoMix(K).attach(model, (3, SIDE))
    mixer.attach(model, (3, SIDE, SIDE))
    with pytest.raises(RuntimeError, match="attached already"):
        mixer.attach(model, (3, SIDE, SIDE))
    with pytest.raises(RuntimeError, match="set_total_steps"):
        mixer.momentum()
    with pytest.raises(ValueError, match="batch size"):
        mixer.training_loss(model, x, torch.tensor([0, 1, 2]))
    unattached = AdAutoMix(K)
    with pytest.raises(RuntimeError, match="attach"):
        unattached.load_state_dict(mixer.state_dict())
