"""``Trainer.step`` against the step written out by hand with autograd: every method's step without a clean
loss (the mixer around the forward, Manifold Mixup's hook gone afterwards), and with ``--clean-loss-weight
W`` the parameter gradient is ``W * d clean_loss + d mixed_loss``, with R-Mix's saliency from the same
backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from rmix_fast.mixers import Mixer, soft_targets
from rmix_fast.saliency import input_gradient
from rmix_fast.training.batches import iterate_batches, to_pixels
from rmix_fast.training.methods import METHODS
from rmix_fast.training.options import parse_args
from rmix_fast.training.trainer import Trainer

# One batch of 20 16-pixel images (the shapes dataset needs no files).
TINY = ["--dataset", "shapes", "--model", "small_cnn", "--image-size", "16", "--train-size", "40",
        "--test-size", "20", "--batch-size", "20", "--epochs", "1", "--no-progress", "--grids", "4"]  # fmt: skip
SEED = 5  # Manifold Mixup's first draw: the output of stage 2, a hidden layer


def _setup(tmp_path, method: str, *extra: str) -> tuple[Trainer, torch.nn.Module, Mixer | None, Tensor, Tensor]:
    """A trainer, a copy of its model, a second mixer with the same draws, and a batch."""
    args = parse_args([*TINY, "--method", method, "--device", "cpu", "--out", str(tmp_path / method), *extra])
    trainer = Trainer(args)
    trainer.start_fresh()
    twin_mixer = METHODS[method].build(args, trainer.num_classes)
    twin = copy.deepcopy(trainer.model)
    if trainer.mixer is not None:
        twin_mixer.attach(twin, (trainer.train_set.channels, *trainer.train_set.image_size))  # AdAutoMix's teacher
        twin_mixer.set_total_steps(args.epochs * trainer.steps_per_epoch)
        twin_mixer.load_state_dict(trainer.mixer.state_dict())  # a learned mixer's state (RL-Mix's policy)
        trainer.mixer.generator = torch.Generator().manual_seed(SEED)
        twin_mixer.generator = torch.Generator().manual_seed(SEED)
    xb, yb, _ = next(iter(iterate_batches(trainer.train_set, trainer._batches(0)[:1], device=trainer.device)))
    x = to_pixels(xb, augment=True, generator=torch.Generator().manual_seed(0))
    return trainer, twin, twin_mixer, x, yb


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# a method that runs its own step (AdAutoMix) has its own test below
@pytest.mark.parametrize("method", [m for m in METHODS if m != "adautomix"])
def test_without_a_clean_loss_the_step_is_the_mixed_loss_alone(tmp_path, method):
    # SAGE's defaults weigh a clean loss in: turned off here, the step is its mix alone too
    trainer, twin, mixer, x, y = _setup(tmp_path, method, "--clean-loss-weight", "0", "--mix-loss-weight", "1")
    assert trainer.args.clean_loss_weight == 0
    loss, _, x_mix, grad = trainer.step(x, y)
    assert _hooks(trainer.model) == 0
    if method == "manifold":
        assert trainer.mixer.last_params.layer == 2 and torch.equal(x_mix, x)

    # the step as written before the clean loss existed: saliency pass, mix, loss, backward
    want_grad = clean = None
    if mixer is not None and mixer.needs_grad:
        want_grad, clean = input_gradient(twin, x, y, return_logits=True)
    if mixer is None:
        want_x, y_soft = x, soft_targets(y, trainer.num_classes)
        logits = twin(want_x)
    else:
        observed = clean if mixer.needs_logits else None
        with mixer.mixing(x, y, want_grad, layers=twin.mix_layers(), logits=observed) as (want_x, y_soft):
            logits = twin(want_x)
    want_loss = trainer.criterion(logits, y_soft)
    want_loss.backward()
    if mixer is not None:
        mixer.after_backward()
    assert torch.equal(loss, want_loss.detach()) and torch.equal(x_mix, want_x)
    assert (grad is None) == (want_grad is None) and (grad is None or torch.equal(grad, want_grad))
    for p, q in zip(trainer.model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_a_mixer_that_owns_the_step_runs_it_whole(tmp_path):
    """AdAutoMix: the trainer's step is the mixer's loss, one backward, the classifier's optimiser step with
    the scheduler's lr, then the mixer's own step and EMA; it reports the classifier's mixed loss."""
    trainer, twin, mixer, x, y = _setup(tmp_path, "adautomix")
    group = dict(trainer.optimizer.param_groups[0])  # this step's lr and momentum (OneCycle cycles both)
    lr = group["lr"]
    loss, correct, x_mix, grad = trainer.step(x, y)
    assert grad is None and trainer.mixer.iteration == 1

    settings = {k: group[k] for k in ("lr", "momentum", "nesterov", "weight_decay")}
    optimizer = torch.optim.SGD(twin.parameters(), **settings)
    out = mixer.training_loss(twin, x, y, trainer.criterion)
    out.loss.backward()
    for p, q in zip(trainer.model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    optimizer.step()
    mixer.after_optimizer_step(twin, lr=lr)
    assert torch.equal(loss, out.parts["mix_q"]) and torch.equal(x_mix, out.mixed)
    assert int(correct) == int((out.logits.argmax(1) == out.targets.argmax(1)).sum())
    for a, b in zip(trainer.model.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for (name, a), b in zip(trainer.mixer.state_dict().items(), mixer.state_dict().values(), strict=True):
        if isinstance(a, Tensor):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("method", ["rmix", "vanilla", "manifold", "sage"])
def test_a_clean_loss_step_adds_the_weighted_clean_gradient(tmp_path, method):
    W = 0.3
    trainer, twin, mixer, x, y = _setup(tmp_path, method, "--clean-loss-weight", str(W), "--label-smoothing", "0.1")
    loss, _, _, grad = trainer.step(x, y)
    assert method != "manifold" or trainer.mixer.last_params.layer == 2

    params = list(twin.parameters())
    t = soft_targets(y, trainer.num_classes, 0.1)  # the step's own targets, unmixed
    xr = x.clone().requires_grad_(True)
    *clean, dx = torch.autograd.grad(W * trainer.criterion(twin(xr), t), [*params, xr])
    if mixer is None:
        assert grad is None
        logits, y_soft = twin(x), t
    else:
        if mixer.needs_grad:
            assert torch.equal(grad, dx)  # the saliency comes from the clean loss's backward
        else:
            assert grad is None
        with mixer.mixing(x, y, dx, layers=twin.mix_layers()) as (x_in, y_soft):
            logits = twin(x_in)
    mixed_loss = trainer.criterion(logits, y_soft)
    weight = trainer.args.mix_loss_weight  # 0.7 by SAGE's defaults, else 1
    assert weight == (0.7 if method == "sage" else 1.0)
    mixed = torch.autograd.grad(mixed_loss * weight if weight != 1 else mixed_loss, params)
    assert torch.equal(loss, mixed_loss.detach())  # the logged loss is the mixed batch's
    for p, c, m in zip(trainer.model.parameters(), clean, mixed, strict=True):
        assert torch.equal(p.grad, c + m)


def test_an_amortised_step_stores_the_routed_gradient_and_skips_the_pass_for_stored_samples(tmp_path, monkeypatch):
    """R-Mix with --saliency-source amortised, through Trainer.step: a batch of new samples runs the saliency
    pass, the same batch again does not (input_gradient is not called); each step stores every sample's map
    of d mixed loss / d x, which equals autograd's on a copy of the model (the mix replayed from its draws)."""
    import rmix_fast.training.trainer as trainer_module
    from rmix_fast import blend_regions
    from rmix_fast.saliency_store import cell_map_from_gradient

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return input_gradient(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "input_gradient", counted)
    trainer, _, _, x, y = _setup(tmp_path, "rmix", "--saliency-source", "amortised", "--grids", "2", "4")
    idx = trainer._batches(0)[0]
    store = trainer.mixer.store
    assert store.grid == 4 and store.num_samples == len(trainer.train_set)
    for fresh in (True, False):
        twin = copy.deepcopy(trainer.model)
        _, _, x_mix, grad = trainer.step(x, y, idx)
        assert len(calls) == 1 and (grad is not None) == fresh
        params = trainer.mixer.last_params
        xr = x.clone().requires_grad_(True)
        mixed, _ = blend_regions(xr, perm=params.perm, lam=params.lam, regions=params.region_map())
        assert torch.equal(mixed, x_mix)
        y_soft = torch.lerp(soft_targets(y, 10)[params.perm], soft_targets(y, 10), params.lam_eff.unsqueeze(1))
        (dx,) = torch.autograd.grad(trainer.criterion(twin(mixed), y_soft), xr)
        assert torch.equal(store.maps[idx], cell_map_from_gradient(dx, 4).half())
        assert store.seen.sum() == len(idx) and store.seen[idx].all()
