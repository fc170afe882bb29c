"""Shared builders of the mixer tests: a seeded batch, a seeded mixer, the soft targets a mix implies."""

from __future__ import annotations

import torch
from torch import Tensor

import rmix_fast
from rmix_fast.mixers import Mixer, MixParams
from tests.helpers.cases import DEVICE

K = 5  # classes


def batch(B: int = 6, H: int = 16, W: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, H, W, generator=g).to(dtype).to(DEVICE)
    grad = torch.randn(B, 3, H, W, generator=g).to(DEVICE)
    y = torch.randint(K, (B,), generator=g).to(DEVICE)
    return x, y, grad


def clean_logits(x: Tensor, seed: int = 0) -> Tensor:
    """(B, K) logits of a clean pass, for a mixer that observes them (RL-Mix; the others ignore them)."""
    return torch.randn(x.shape[0], K, generator=torch.Generator().manual_seed(seed)).to(x.device)


def make(cls: type[Mixer], seed: int = 0, **kwargs) -> Mixer:
    return cls(K, generator=torch.Generator().manual_seed(seed), **kwargs)


def expected_targets(y: Tensor, params: MixParams, smoothing: float = 0.0) -> Tensor:
    t = rmix_fast.soft_targets(y, K, smoothing)
    lam = params.lam_eff[:, None].double()
    return (lam * t.double() + (1 - lam) * t[params.perm].double()).float()
