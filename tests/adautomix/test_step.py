"""One AdAutoMix training step against the float64 transcription of the published ``forward_train``
(tests/helpers/adautomix_step_transcription.py) on a tiny backbone with fixed draws: the mixes (so the
masks), every loss term, the adversarial toggle, the gradients of the classifier, its one-hot head and the
generator, the BatchNorm statistics of both networks (the order and number of forwards), the EMA after the
optimiser step with the momentum at 0, 10 % and 100 % of training, and the reuse option's divergence."""

from __future__ import annotations

import copy

import pytest
import torch

from rmix_fast.adautomix import sample_adautomix
from rmix_fast.mixers import AdAutoMix
from rmix_fast.training.models import SmallCNN
from tests.adautomix.test_ema import hook_momentum
from tests.helpers.adautomix_step_transcription import momentum_update, published_step
from tests.helpers.adautomix_transcription import from_generator, parameters

B, K, SIDE, LR, WD = 6, 5, 16, 0.1, 1e-4
TOL = 1e-10


def build(n: int, *, seed: int = 0, lam_margin: float = 0.03, reuse: bool = False, total: int = 100):
    torch.manual_seed(seed)
    model = SmallCNN(K, 3, widths=(4, 6, 8)).double()
    mixer = AdAutoMix(
        K, n_sources=n, lam_margin=lam_margin, reuse_teacher_logits=reuse,
        generator=torch.Generator().manual_seed(seed), ema_momentum=0.5, ema_end_momentum=0.9,
        lr=LR, momentum=0.9, weight_decay=WD,
    )  # fmt: skip
    mixer.attach(model, (3, SIDE, SIDE))
    # published init std 0.01 makes the attention uniform to ~1e-4: a larger one so the masks carry signal
    mixer.mask_generator.reset_parameters(std=0.4, generator=torch.Generator().manual_seed(seed + 1))
    mixer.set_total_steps(total)
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.rand(B, 3, SIDE, SIDE, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    return model, mixer, x, y


def transcription_copies(model, mixer):
    k, q = copy.deepcopy(mixer.teacher.module), copy.deepcopy(model)
    for p in q.parameters():
        p.grad = None
    head_one = tuple(t.detach().clone().requires_grad_(True) for t in (mixer.head_one.weight, mixer.head_one.bias))
    return k, q, head_one, from_generator(mixer.mask_generator, requires_grad=True)


def run_both(n, *, seed=0, iteration=0, lam_margin=0.03, force_fallback=False):
    model, mixer, x, y = build(n, seed=seed, lam_margin=lam_margin)
    mixer.iteration = iteration
    k, q, head_one, block = transcription_copies(model, mixer)
    draw = sample_adautomix(B, n, generator=torch.Generator().manual_seed(seed))  # the mixer's first draw
    if force_fallback:  # the margin covers every λ_0 the draw can give
        assert mixer.lam_margin >= min(draw.lam_bb_host[0], 1 - draw.lam_bb_host[0])
    ours = mixer.training_loss(model, x, y)
    want = published_step(
        k=k, q=q, head_one=head_one, mix_block=block, layer=mixer.feature_layer, x=x, gt_label=y, draw=draw,
        scale=mixer.scale, mode="bilinear", lam_margin=lam_margin, mixup_radio=0.5, beta_radio=0.3,
        iteration=iteration,
    )  # fmt: skip
    return model, mixer, ours, want, (k, q, head_one, block), draw


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("iteration", [0, 1])
def test_one_step_equals_the_published_step(n, iteration):
    model, mixer, ours, want, (k, q, head_one, block), draw = run_both(n, iteration=iteration)
    assert ours.adversarial == (iteration % 2 == 0)
    assert not draw.fallback(0.03)  # the generator's mask reaches the classifier in this draw
    torch.testing.assert_close(ours.mixed, want["x_bb"], rtol=TOL, atol=TOL)
    keys = ("mix_q", "one_q", "mix_k", "cosine") + (("lin_q",) if n > 2 else ())
    assert set(ours.parts) == set(keys)
    for key in keys:
        torch.testing.assert_close(ours.parts[key], want[key].detach(), rtol=TOL, atol=TOL, msg=key)
    torch.testing.assert_close(ours.loss.detach(), want["loss"].detach(), rtol=TOL, atol=TOL)
    # the two terms of the generator's objective really differ, so the toggle is visible in the total
    assert abs(float(want["mix_k"].detach()) - float(want["cosine"].detach())) > 0.1
    # the masks carry signal: the generated mixes differ from the constant-λ ones by far more than the tolerance
    x = build(n)[2]
    for mixed, index, lam in (
        (want["x_mb"], draw.index_mb, draw.lam_mb_host),
        (want["x_bb"], draw.index_bb, draw.lam_bb_host),
    ):
        linear = sum(lam[i] * x[index[i]] for i in range(n))
        assert (mixed.detach() - linear).abs().max() > 1e-3

    ours.loss.backward()
    want["loss"].backward()
    for name, p in mixer.mask_generator.named_parameters():
        expected = parameters(block)[name].grad
        torch.testing.assert_close(p.grad, expected, rtol=1e-9, atol=1e-13, msg=name)
    assert any(p.grad.abs().max() > 1e-6 for p in mixer.mask_generator.parameters())
    torch.testing.assert_close(mixer.head_one.weight.grad, head_one[0].grad, rtol=1e-9, atol=1e-13)
    for (name, p), pq in zip(model.named_parameters(), q.parameters(), strict=True):
        torch.testing.assert_close(p.grad, pq.grad, rtol=1e-9, atol=1e-13, msg=name)
    assert all(p.grad is None for p in mixer.teacher.parameters())  # the teacher is frozen
    # BatchNorm running statistics: the same forwards in the same order on both networks
    for ours_net, their_net in ((mixer.teacher.module, k), (model, q)):
        for (name, a), b in zip(ours_net.named_buffers(), their_net.buffers(), strict=True):
            torch.testing.assert_close(a, b, rtol=TOL, atol=TOL, msg=name)


def test_the_generator_gradient_changes_sign_with_the_toggle():
    grads = []
    for iteration in (0, 1):
        _, mixer, ours, *_ = run_both(3, iteration=iteration)
        ours.loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in mixer.mask_generator.parameters()]))
    # different objectives: -0.3 L_k + 0.7 cos against L_k
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("n", [2, 3])
def test_lam_margin_fallback_uses_the_constant_lam(n):
    _, _, ours, want, _, draw = run_both(n, lam_margin=0.49, force_fallback=True)
    assert draw.fallback(0.49)
    torch.testing.assert_close(ours.mixed, want["x_bb"], rtol=TOL, atol=TOL)
    x = build(n)[2]
    expected = sum(draw.lam_bb_host[i] * x[draw.index_bb[i]] for i in range(n))
    torch.testing.assert_close(ours.mixed, expected, rtol=TOL, atol=TOL)
    torch.testing.assert_close(ours.parts["mix_q"], want["mix_q"].detach(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize(("iteration", "total"), [(0, 100), (10, 100), (100, 100)])
def test_ema_after_the_step_follows_the_hook_schedule(iteration, total):
    model, mixer, ours, want, (k, q, head_one, _), _ = run_both(3, iteration=iteration)
    before = copy.deepcopy(mixer.teacher.module)
    ours.loss.backward()
    want["loss"].backward()
    torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=WD).step()
    mixer.after_optimizer_step(model, lr=LR)
    with torch.no_grad():  # the published optimiser's first step: buffer = grad + wd * p
        for p in q.parameters():
            p -= LR * (p.grad + WD * p)
    m = hook_momentum(iteration, total, 0.5, 0.9, 0.1)
    assert m == mixer_momentum_at(mixer, iteration)
    momentum_update(k, q, m)
    assert mixer.iteration == iteration + 1
    moved = False
    for (name, a), b, old in zip(
        mixer.teacher.module.named_parameters(), k.parameters(), before.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)
        moved |= not torch.equal(a, old)
    assert moved == (m < 1)
    # the generator and the one-hot head took one SGD step of their own at the classifier's lr
    with torch.no_grad():
        expected = head_one[0] - LR * (head_one[0].grad + WD * head_one[0])
    torch.testing.assert_close(mixer.head_one.weight, expected, rtol=1e-12, atol=1e-14)


def mixer_momentum_at(mixer: AdAutoMix, iteration: int) -> float:
    saved, mixer.iteration = mixer.iteration, iteration
    try:
        return mixer.momentum()
    finally:
        mixer.iteration = saved


def test_reusing_the_teacher_logits_changes_the_loss_by_rounding_only():
    losses = []
    for reuse in (False, True):
        model, mixer, x, y = build(3, reuse=reuse)
        losses.append(mixer.training_loss(model, x, y))
    torch.testing.assert_close(losses[1].parts["cosine"], losses[0].parts["cosine"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses[1].loss, losses[0].loss, rtol=1e-12, atol=1e-12)
