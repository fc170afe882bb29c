"""What every mixer of the family does (``Mixer``'s contract), on every backend: pixels and soft targets
follow ``last_params``, seeds, batch sizes, ``prob``, smoothing, soft-target input, per-sample lam, layouts,
module state, bad arguments. A new method joins ``MIXERS`` and ``EXPECTED_MIX``; its own
behaviour goes in ``test_<method>.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rmix_fast
from rmix_fast import reference
from tests.helpers.cases import BACKENDS, DEVICE
from tests.helpers.mixer_cases import K, batch, clean_logits, expected_targets, make

MIXERS = [rmix_fast.RMix, rmix_fast.Mixup, rmix_fast.CutMix, rmix_fast.ManifoldMixup, rmix_fast.RLMix, rmix_fast.SAGE]


def _rmix_mix(x, grad, p):
    want, want_lam_eff, want_mask = reference.rmix_forward(x, grad, p.perm, p.lam, p.q, p.grid)
    assert p.grid in (2, 4) and torch.equal(p.mask, want_mask)
    return want, want_lam_eff


def _mixup_mix(x, grad, p):
    return reference.blend_regions_forward(x, torch.zeros(x.shape[0], 1, 1, dtype=torch.int8), p.perm, p.lam)


def _cutmix_mix(x, grad, p):
    y0, y1, x0, x1 = p.box[0].tolist()
    want = x.clone()
    want[:, :, y0:y1, x0:x1] = x[p.perm][:, :, y0:y1, x0:x1]
    area = (y1 - y0) * (x1 - x0) / (x.shape[2] * x.shape[3])
    return want, torch.full((x.shape[0],), 1 - area, device=DEVICE)


def _sage_mix(x, grad, p):
    mixed, lam_eff, shift, _ = reference.sage_forward(x, grad, p.perm, p.lam, p.offsets, 1.0, 5)
    assert torch.equal(p.shift, shift)
    return mixed, lam_eff


# Each method's mix, written from its definition (not through the blend engine where avoidable).
# Manifold Mixup called on images (no layers) can only draw the input layer: Mixup of the images.
EXPECTED_MIX = {
    rmix_fast.RMix: _rmix_mix,
    rmix_fast.Mixup: _mixup_mix,
    rmix_fast.CutMix: _cutmix_mix,
    rmix_fast.ManifoldMixup: _mixup_mix,
    rmix_fast.RLMix: _rmix_mix,  # R-Mix with the levels its agent chose (p.q)
    rmix_fast.SAGE: _sage_mix,
}


def test_every_mixer_has_an_expected_mix():
    assert set(EXPECTED_MIX) == set(MIXERS)


@pytest.mark.parametrize("cls", MIXERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_follow_the_drawn_parameters(cls, backend):
    x, y, grad = batch()
    mixer = make(cls, backend=backend)
    x_mix, y_soft = mixer(x, y, grad, logits=clean_logits(x))
    p = mixer.last_params
    assert p.applied and x_mix.shape == x.shape and x_mix.dtype == x.dtype
    assert y_soft.shape == (6, K) and y_soft.dtype == torch.float32
    torch.testing.assert_close(y_soft.sum(1), torch.ones(6, device=DEVICE))
    torch.testing.assert_close(y_soft, expected_targets(y, p))
    want, want_lam_eff = EXPECTED_MIX[cls](x, grad, p)
    torch.testing.assert_close(x_mix, want)
    torch.testing.assert_close(p.lam_eff, want_lam_eff)


@pytest.mark.parametrize("cls", MIXERS)
def test_same_seed_same_outputs(cls):
    x, y, grad = batch()
    a = make(cls, seed=3)(x, y, grad, logits=clean_logits(x))
    b = make(cls, seed=3)(x, y, grad, logits=clean_logits(x))
    c = make(cls, seed=4)(x, y, grad, logits=clean_logits(x))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("cls", MIXERS)
@pytest.mark.parametrize("B", [1, 2, 7])
def test_small_and_odd_batches(cls, B):
    x, y, grad = batch(B=B)
    x_mix, y_soft = make(cls)(x, y, grad, logits=clean_logits(x))
    assert x_mix.shape == x.shape and y_soft.shape == (B, K)
    if B == 1:  # mixed with itself: its own label; unchanged, except SAGE's (itself shifted: another image)
        assert cls is rmix_fast.SAGE or torch.equal(x_mix, x)
        assert torch.equal(y_soft, F.one_hot(y, K).float())


@pytest.mark.parametrize("cls", MIXERS)
def test_prob_passes_some_batches_through(cls):
    x, y, grad = batch()
    mixer = make(cls, prob=0.5)
    applied = []
    for _ in range(40):
        x_mix, y_soft = mixer(x, y, grad, logits=clean_logits(x))
        applied.append(mixer.last_params.applied)
        if not mixer.last_params.applied:
            assert x_mix is x and torch.equal(y_soft, F.one_hot(y, K).float())
    assert 5 < sum(applied) < 35
    never = make(cls, prob=0.0)
    assert never(x, y, grad, logits=clean_logits(x))[0] is x and not never.last_params.applied


@pytest.mark.parametrize("cls", MIXERS)
def test_label_smoothing(cls):
    x, y, grad = batch()
    mixer = make(cls, label_smoothing=0.1)
    _, y_soft = mixer(x, y, grad, logits=clean_logits(x))
    torch.testing.assert_close(y_soft, expected_targets(y, mixer.last_params, 0.1))
    assert float(y_soft.min()) >= 0.1 / K - 1e-7


@pytest.mark.parametrize("cls", MIXERS)
def test_soft_target_input(cls):
    x, _, grad = batch()
    soft = F.softmax(torch.randn(6, K, generator=torch.Generator().manual_seed(1)), dim=1).to(DEVICE)
    mixer = make(cls)
    _, y_soft = mixer(x, soft, grad, logits=clean_logits(x))
    p = mixer.last_params
    want = p.lam_eff[:, None] * soft + (1 - p.lam_eff[:, None]) * soft[p.perm]
    torch.testing.assert_close(y_soft, want)


@pytest.mark.parametrize("cls", MIXERS)
def test_per_sample_lam(cls):
    x, y, grad = batch(B=8)
    mixer = make(cls, per_sample_lam=True)
    mixer(x, y, grad, logits=clean_logits(x))
    p = mixer.last_params
    assert p.lam.unique().numel() == 8
    if cls is rmix_fast.CutMix:
        assert p.box.unique(dim=0).shape[0] > 1  # one box per sample
        area = (p.box[:, 1] - p.box[:, 0]) * (p.box[:, 3] - p.box[:, 2])
        torch.testing.assert_close(p.lam_eff, 1 - area.float() / 256)


@pytest.mark.parametrize("cls", MIXERS)
def test_channels_last_and_bf16(cls):
    x, y, grad = batch(dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    x_mix, y_soft = make(cls)(x, y, grad, logits=clean_logits(x))
    assert x_mix.dtype == torch.bfloat16 and x_mix.is_contiguous(memory_format=torch.channels_last)
    assert y_soft.dtype == torch.float32


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "match"),
    [
        (rmix_fast.RMix, {"alpha": 0.0}, ValueError, "alpha must be"),
        (rmix_fast.Mixup, {"prob": 1.5}, ValueError, "prob must be"),
        (rmix_fast.CutMix, {"label_smoothing": -0.1}, ValueError, "label_smoothing must be"),
        (rmix_fast.RMix, {"grids": ()}, ValueError, "grids must be"),
        (rmix_fast.RMix, {"grids": (2, 0)}, ValueError, "grids must be"),
        (rmix_fast.RMix, {"levels": 0}, ValueError, "levels must be"),
        (rmix_fast.Mixup, {"generator": 3}, TypeError, "generator must be"),
    ],
)
def test_bad_construction(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(K, **kwargs)
    with pytest.raises(ValueError, match="num_classes"):
        cls(0)


def test_bad_calls():
    x, y, grad = batch()
    with pytest.raises(ValueError, match="labels must lie in"):
        make(rmix_fast.Mixup)(x, y + K)
    with pytest.raises(ValueError, match="batch size"):
        make(rmix_fast.Mixup)(x, y[:3])
    with pytest.raises(ValueError, match="soft targets"):
        make(rmix_fast.Mixup)(x, torch.rand(6, K + 1, device=DEVICE))
    with pytest.raises(TypeError, match="integer class labels"):
        make(rmix_fast.Mixup)(x, y.float())
    with pytest.raises(ValueError, match="grad must have x's shape"):
        make(rmix_fast.RMix)(x, y, grad[:, :1])


@pytest.mark.parametrize("cls", MIXERS)
def test_a_mixer_is_a_module_and_its_region_map_is_what_it_blended(cls):
    x, y, grad = batch()
    mixer = make(cls).to(DEVICE)
    assert isinstance(mixer, torch.nn.Module)
    assert (mixer.state_dict() != {}) == (cls is rmix_fast.RLMix)  # only RL-Mix's agent is state
    x_mix, _ = mixer(x, y, grad, logits=clean_logits(x))
    p = mixer.last_params
    if cls is rmix_fast.SAGE:  # a soft per-pixel mask: no region map
        assert p.region_map() is None
        return
    mixed, lam_eff = rmix_fast.blend_regions(x, perm=p.perm, lam=p.lam, regions=p.region_map(), backend="reference")
    torch.testing.assert_close(x_mix, mixed)
    torch.testing.assert_close(lam_eff, p.lam_eff)
