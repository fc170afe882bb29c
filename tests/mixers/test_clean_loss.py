"""``rmix_fast.clean_loss_backward``: the clean batch's weighted loss as a training signal whose backward also
gives the saliency. Parameter and input gradients against hand-written autograd, accumulation with the
step's own loss, the loss scale, BatchNorm modes, the DDP wrapper, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rmix_fast
from tests.helpers.toy_task import ToyCNN


def model_and_batch(seed: int = 0, B: int = 6, size: int = 16) -> tuple[ToyCNN, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = ToyCNN(classes=5)
    g = torch.Generator().manual_seed(seed)
    return model, torch.rand(B, 3, size, size, generator=g), torch.randint(5, (B,), generator=g)


def twin_of(model: nn.Module) -> ToyCNN:
    """A copy of ``model``'s state (train mode: BatchNorm normalises by the batch, as the pass did)."""
    twin = ToyCNN(classes=5)
    twin.load_state_dict(model.state_dict())
    return twin


def by_hand(model: nn.Module, x: Tensor, y: Tensor, weight: float) -> tuple[list[Tensor], Tensor, Tensor]:
    """d(weight * CE)/d params and /d x by autograd, and the loss."""
    xr = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xr), y)
    *params, dx = torch.autograd.grad(weight * loss, [*model.parameters(), xr])
    return params, dx, loss.detach()


@pytest.mark.parametrize("weight", [0.5, 0.3, 2.0])
def test_param_and_input_gradients_equal_hand_written_autograd(weight):
    model, x, y = model_and_batch()
    twin = twin_of(model)
    grad, loss = rmix_fast.clean_loss_backward(model, x, y, weight=weight)
    want_params, want_dx, want_loss = by_hand(twin, x, y, weight)
    for p, want in zip(model.parameters(), want_params, strict=True):
        assert torch.equal(p.grad, want)
    assert torch.equal(grad, want_dx) and torch.equal(loss, want_loss)
    assert not grad.requires_grad and not x.requires_grad and not loss.requires_grad
    assert grad.shape == x.shape and grad.dtype == x.dtype


def test_the_step_loss_adds_to_the_kept_gradients():
    """The use in a training step: clean pass, then the mixed loss's backward, then one optimizer step on the sum."""
    model, x, y = model_and_batch()
    twin = twin_of(model)
    mixer = rmix_fast.RMix(5, generator=torch.Generator().manual_seed(3))
    grad, _ = rmix_fast.clean_loss_backward(model, x, y, weight=0.5)
    x_mix, y_soft = mixer(x, y, grad)
    rmix_fast.SoftTargetCrossEntropy()(model(x_mix), y_soft).backward()

    clean, dx, _ = by_hand(twin, x, y, 0.5)
    again = rmix_fast.RMix(5, generator=torch.Generator().manual_seed(3))
    x_mix2, y_soft2 = again(x, y, dx)
    assert torch.equal(x_mix, x_mix2)
    mixed = torch.autograd.grad(rmix_fast.SoftTargetCrossEntropy()(twin(x_mix2), y_soft2), list(twin.parameters()))
    for p, c, m in zip(model.parameters(), clean, mixed, strict=True):
        assert torch.equal(p.grad, c + m)


def test_saliency_is_the_weighted_input_gradient():
    """A positive multiple of ``input_gradient``'s (exact for a power-of-two weight): the same R-Mix mask."""
    model, x, y = model_and_batch()
    model.eval()
    plain = rmix_fast.input_gradient(model, x, y)
    grad, _ = rmix_fast.clean_loss_backward(model, x, y, weight=0.25)
    assert torch.equal(grad, 0.25 * plain)
    masks = []
    for g in (plain, grad):
        mixer = rmix_fast.RMix(5, generator=torch.Generator().manual_seed(0))
        mixer(x, y, g)
        masks.append(mixer.last_params.mask)
    assert torch.equal(*masks)


def test_without_input_grad_and_with_a_loss_scale():
    model, x, y = model_and_batch()
    twin = twin_of(model)
    grad, _ = rmix_fast.clean_loss_backward(model, x, y, weight=0.5, input_grad=False, scale_loss=lambda t: t * 1024)
    assert grad is None and not x.requires_grad
    want, _, _ = by_hand(twin, x, y, 0.5 * 1024)  # the scale is a power of two: exact
    for p, w in zip(model.parameters(), want, strict=True):
        assert torch.equal(p.grad, w)
    _, dx, _ = by_hand(twin, x, y, 0.5)
    scaled, _ = rmix_fast.clean_loss_backward(twin, x, y, weight=0.5, scale_loss=lambda t: t * 1024)
    assert torch.equal(scaled, dx * 1024)  # the saliency carries the scale too


def test_soft_targets_and_the_step_loss_function():
    model, x, y = model_and_batch()
    twin = twin_of(model)
    t = rmix_fast.soft_targets(y, 5, 0.1)
    loss_fn = rmix_fast.losses.SoftmaxBCE()
    grad, loss = rmix_fast.clean_loss_backward(model, x, t, weight=0.7, loss_fn=loss_fn)
    xr = x.clone().requires_grad_(True)
    want_loss = loss_fn(twin(xr), t)
    (dx,) = torch.autograd.grad(0.7 * want_loss, xr)
    assert torch.equal(loss, want_loss.detach()) and torch.equal(grad, dx)


@pytest.mark.parametrize("mode", ["update", "keep", "eval"])
def test_batchnorm_modes(mode):
    model, x, y = model_and_batch()
    bn = model.features[1]
    before = bn.running_mean.clone()
    rmix_fast.clean_loss_backward(model, x, y, weight=1.0, batchnorm=mode)
    assert (not torch.equal(before, bn.running_mean)) == (mode == "update")
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is not None for p in model.parameters())  # a training signal in every mode


def test_half_resolution_pass():
    model, x, y = model_and_batch(size=32)
    grad, _ = rmix_fast.clean_loss_backward(model, x, y, weight=1.0, resolution=0.5, batchnorm="keep")
    assert grad.shape == x.shape and torch.equal(grad[..., ::2, ::2], grad[..., 1::2, 1::2])
    torch.testing.assert_close(grad, rmix_fast.input_gradient(model, x, y, resolution=0.5, batchnorm="keep"))


def test_ddp_wrapper_is_unwrapped():
    model, x, y = model_and_batch()
    twin = twin_of(model)

    class FakeDDP(nn.parallel.DistributedDataParallel):
        def __init__(self, module: nn.Module) -> None:  # no process group needed: only .module is used
            nn.Module.__init__(self)
            self.module = module

        def forward(self, *args: object) -> Tensor:
            raise AssertionError("the clean pass must not run through the DDP wrapper")

    grad, _ = rmix_fast.clean_loss_backward(FakeDDP(model), x, y, weight=0.5)
    want, dx, _ = by_hand(twin, x, y, 0.5)
    assert torch.equal(grad, dx) and all(torch.equal(p.grad, w) for p, w in zip(model.parameters(), want, strict=True))


@pytest.mark.parametrize("weight", [0, 0.0, -1.0, float("inf"), float("nan"), True, "1"])
def test_bad_weight(weight):
    model, x, y = model_and_batch()
    with pytest.raises(ValueError, match="weight must be a finite number > 0"):
        rmix_fast.clean_loss_backward(model, x, y, weight=weight)
    assert all(p.grad is None for p in model.parameters())
