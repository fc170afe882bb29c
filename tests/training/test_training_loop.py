"""A timm-style loop: model, optimizer, a mixer and ``SoftTargetCrossEntropy``; the clean loss must fall."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rmix_fast
from tests.helpers.toy_task import CLASS_NAMES, ToyCNN, make_toy_images

pytestmark = pytest.mark.slow  # trains a network to a lower held-out loss, per method


def held_out_loss(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        loss = float(F.cross_entropy(model(x), y))
    model.train()
    return loss


@pytest.mark.parametrize("method", ["rmix", "mixup", "cutmix"])
def test_loss_decreases(method):
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(0)
    model = ToyCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    cls = {"rmix": rmix_fast.RMix, "mixup": rmix_fast.Mixup, "cutmix": rmix_fast.CutMix}[method]
    mixer = cls(len(CLASS_NAMES), generator=torch.Generator().manual_seed(1))
    criterion = rmix_fast.SoftTargetCrossEntropy()
    x_test, y_test = make_toy_images(256, data)
    start = held_out_loss(model, x_test, y_test)
    for _ in range(150):
        x, y = make_toy_images(32, data)
        grad = rmix_fast.input_gradient(model, x, y) if mixer.needs_grad else None  # the 3 lines of the README
        x_mix, y_soft = mixer(x, y, grad)
        loss = criterion(model(x_mix), y_soft)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    end = held_out_loss(model, x_test, y_test)
    assert end < 0.8 * start, f"{method}: held-out loss {start:.3f} -> {end:.3f}"


def test_bf16_autocast_channels_last_step():
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(0)
    model = ToyCNN().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    mixer = rmix_fast.RMix(len(CLASS_NAMES), generator=torch.Generator().manual_seed(1))
    x, y = make_toy_images(16, data)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grad = rmix_fast.input_gradient(model, x, y)
        x_mix, y_soft = mixer(x, y, grad)
        loss = rmix_fast.SoftTargetCrossEntropy()(model(x_mix), y_soft)
    loss.backward()
    optimizer.step()
    assert x_mix.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())
