"""``rmix_fast.input_gradient``: the saliency pass of R-Mix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rmix_fast
from tests.helpers.toy_task import ToyCNN


def model_and_batch(seed: int = 0, B: int = 6, size: int = 16):
    torch.manual_seed(seed)
    model = ToyCNN(classes=5)
    g = torch.Generator().manual_seed(seed)
    return model, torch.rand(B, 3, size, size, generator=g), torch.randint(5, (B,), generator=g)


def test_equals_hand_written_autograd_grad_and_leaves_param_grads_none():
    model, x, y = model_and_batch()
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    grad = rmix_fast.input_gradient(model, x, y)

    torch.manual_seed(1)  # the same forward again on a fresh copy of the state: train-mode BN, batch stats
    twin = ToyCNN(classes=5)
    twin.load_state_dict(snapshot)
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(F.cross_entropy(twin(xr), y), xr)
    assert torch.equal(grad, want)
    assert all(p.grad is None for p in model.parameters())
    assert not grad.requires_grad and not x.requires_grad
    assert grad.shape == x.shape and grad.dtype == x.dtype


def test_soft_targets_and_custom_loss():
    model, x, y = model_and_batch()
    model.eval()
    onehot = F.one_hot(y, 5).float()
    assert torch.allclose(rmix_fast.input_gradient(model, x, onehot), rmix_fast.input_gradient(model, x, y))
    doubled = rmix_fast.input_gradient(model, x, y, loss_fn=lambda logits, t: 2 * F.cross_entropy(logits, t))
    torch.testing.assert_close(doubled, 2 * rmix_fast.input_gradient(model, x, y))


@pytest.mark.parametrize("mode", ["update", "keep", "eval"])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_modes(mode, training):
    model, x, y = model_and_batch()
    model.train(training)
    bn = model.features[1]
    before = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    rmix_fast.input_gradient(model, x, y, batchnorm=mode)
    after = bn.running_mean, bn.running_var, bn.num_batches_tracked
    changed = not all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert changed == (mode == "update" and training)  # only the paper's mode in train mode updates stats
    assert model.training == training and all(m.training == training for m in model.modules())


def test_eval_mode_gradient_uses_running_stats():
    model, x, y = model_and_batch()
    model.train()
    got = rmix_fast.input_gradient(model, x, y, batchnorm="eval")
    model.eval()
    assert torch.equal(got, rmix_fast.input_gradient(model, x, y))


def test_channels_last_is_kept():
    model, x, y = model_and_batch()
    model.eval()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    grad = rmix_fast.input_gradient(model.to(memory_format=torch.channels_last), x_cl, y)
    assert grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad, rmix_fast.input_gradient(model, x, y), rtol=1e-4, atol=1e-7)


def test_bf16_autocast_on_cpu():
    model, x, y = model_and_batch()
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grad = rmix_fast.input_gradient(model, x, y)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    want = rmix_fast.input_gradient(model, x, y)
    cos = F.cosine_similarity(grad.flatten(), want.flatten(), dim=0)
    assert cos > 0.9  # bf16 arithmetic, same direction


def test_loss_scale_is_undone_and_default_for_fp16_autocast(monkeypatch):
    model, x, y = model_and_batch()
    model.eval()
    plain = rmix_fast.input_gradient(model, x, y)
    scaled = rmix_fast.input_gradient(model, x, y, loss_scale=1024.0)
    torch.testing.assert_close(scaled, plain, rtol=1e-5, atol=1e-9)
    seen = []
    orig = torch.autograd.grad

    def spy(outputs, inputs, *args, **kwargs):
        seen.append(float(outputs.detach()))
        return orig(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    with torch.autocast("cpu", dtype=torch.float16):
        rmix_fast.input_gradient(model, x, y)
    with torch.no_grad():
        loss = float(F.cross_entropy(model(x), y))
    assert seen and seen[0] == pytest.approx(loss * rmix_fast.saliency.FP16_LOSS_SCALE, rel=5e-2)


def test_non_finite_gradient_gives_uniform_mix_not_nan():
    model, x, y = model_and_batch()
    grad = rmix_fast.input_gradient(model, x, y)
    grad[0, 0, 0, 0] = float("inf")
    grad[1] = float("nan")
    mixer = rmix_fast.RMix(5, generator=torch.Generator().manual_seed(0))
    x_mix, y_soft = mixer(x, y, grad)
    assert torch.isfinite(x_mix).all() and torch.isfinite(y_soft).all()
    assert mixer.last_params.mask[:2].all()  # no usable saliency: every cell top, i.e. plain mixup


def test_half_resolution_pass():
    model, x, y = model_and_batch(size=32)
    model.eval()
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(tuple(args[0].shape)))
    grad = rmix_fast.input_gradient(model, x, y, resolution=0.5)
    assert calls == [(6, 3, 16, 16)]
    assert grad.shape == x.shape
    # nearest upsampling: each 2 x 2 block repeats one value, so cell saliency equals the half-size map's
    assert torch.equal(grad[..., ::2, ::2], grad[..., 1::2, 1::2])
    small = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    small.requires_grad_(True)
    (want,) = torch.autograd.grad(F.cross_entropy(model(small), y), small)
    torch.testing.assert_close(grad[..., ::2, ::2], want)


def test_ddp_wrapper_is_unwrapped(monkeypatch):
    model, x, y = model_and_batch()
    model.eval()

    class FakeDDP(nn.parallel.DistributedDataParallel):
        def __init__(self, module):  # no process group needed: only .module is used
            nn.Module.__init__(self)
            self.module = module

        def forward(self, *args):
            raise AssertionError("the saliency pass must not run through the DDP wrapper")

    grad = rmix_fast.input_gradient(FakeDDP(model), x, y)
    assert torch.equal(grad, rmix_fast.input_gradient(model, x, y))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "net"}, TypeError, "model must be a torch.nn.Module"),
        ({"x": torch.rand(3, 16, 16)}, ValueError, "x must be a 4-D float tensor"),
        ({"y": torch.zeros(5, dtype=torch.int64)}, ValueError, "y must be"),
        ({"y": torch.zeros(6)}, TypeError, "integer class labels"),
        ({"batchnorm": "freeze"}, ValueError, "batchnorm must be one of"),
        ({"resolution": 0}, ValueError, "resolution must be"),
        ({"resolution": 1.5}, ValueError, "resolution must be"),
        ({"loss_scale": 0.0}, ValueError, "loss_scale must be > 0"),
        ({"loss_fn": lambda logits, t: F.cross_entropy(logits, t, reduction="none")}, ValueError, "scalar"),
    ],
)
def test_bad_input(kwargs, error, match):
    model, x, y = model_and_batch()
    args = {"model": model, "x": x, "y": y, **kwargs}
    with pytest.raises(error, match=match):
        rmix_fast.input_gradient(args.pop("model"), args.pop("x"), args.pop("y"), **args)
