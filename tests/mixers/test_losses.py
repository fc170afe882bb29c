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
