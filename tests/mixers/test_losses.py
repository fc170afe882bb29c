"""The soft-target losses: against hand-written formulas, and float32 under autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rmix_fast

K = 5


def test_soft_target_cross_entropy():
    logits = torch.randn(6, K)
    y = torch.randint(K, (6,))
    loss = rmix_fast.SoftTargetCrossEntropy()
    torch.testing.assert_close(loss(logits, F.one_hot(y, K).float()), F.cross_entropy(logits, y))
    soft = F.softmax(torch.randn(6, K), dim=1)
    want = -(soft * F.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(loss(logits, soft), want)
    with pytest.raises(ValueError, match="target must be"):
        loss(logits, y)
    with pytest.raises(ValueError, match="logits must be"):
        loss(logits[0], soft[0])


def test_soft_target_bce():
    logits = torch.randn(6, K)
    soft = F.softmax(torch.randn(6, K), dim=1)
    by_hand = -(soft * F.logsigmoid(logits) + (1 - soft) * F.logsigmoid(-logits))
    torch.testing.assert_close(rmix_fast.SoftTargetBCEWithLogits()(logits, soft), by_hand.mean())
    torch.testing.assert_close(rmix_fast.SoftTargetBCEWithLogits("sum_classes")(logits, soft), by_hand.sum(1).mean())
    with pytest.raises(ValueError, match="reduction"):
        rmix_fast.SoftTargetBCEWithLogits("none")


def test_losses_under_bf16_autocast_are_float32():
    logits = torch.randn(6, K).bfloat16()
    soft = F.softmax(torch.randn(6, K), dim=1)
    assert rmix_fast.SoftTargetCrossEntropy()(logits, soft).dtype == torch.float32
    assert rmix_fast.SoftTargetBCEWithLogits()(logits, soft).dtype == torch.float32


def test_softmax_bce_is_bce_on_softmax_probabilities_over_b_times_k():
    from rmix_fast.losses import SoftmaxBCE

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64)
    target = torch.softmax(torch.randn(5, 7, generator=g, dtype=torch.float64), dim=1)
    p = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    by_hand = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).sum() / (5 * 7)
    got = SoftmaxBCE()(logits, target)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), by_hand, rtol=1e-5, atol=1e-6)
    # the reference implementation the baselines' code uses
    torch.testing.assert_close(got, torch.nn.BCELoss()(torch.softmax(logits.float(), 1), target.float()))


def test_softmax_bce_under_autocast_and_its_gradient():
    from rmix_fast.losses import SoftmaxBCE

    logits = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    target = torch.eye(3)[[0, 1, 2, 0]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = SoftmaxBCE()(logits, target)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(logits.grad.float()).all()
