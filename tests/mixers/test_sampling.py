"""The sampler that turns a torch.Generator into R-Mix's inputs."""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from rmix_fast.sampling import paper_levels, sample_beta, to_device


def test_same_seed_same_draw_and_valid_values():
    a = rmix_fast.sample_rmix_params(16, generator=torch.Generator().manual_seed(3))
    b = rmix_fast.sample_rmix_params(16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.perm, b.perm) and torch.equal(a.lam, b.lam) and torch.equal(a.q, b.q) and a.grid == b.grid
    assert torch.equal(a.perm.sort().values, torch.arange(16))
    assert a.grid in (2, 4) and a.lam.shape == (16,) and (a.lam == a.lam[0]).all()
    levels = paper_levels(10).float()
    assert torch.isin(a.q, levels).all()


def test_paper_levels():
    torch.testing.assert_close(paper_levels(10), torch.tensor([0.11 * k for k in range(10)], dtype=torch.float64))
    with pytest.raises(ValueError, match="levels"):
        paper_levels(0)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_beta_moments(alpha):
    draws = sample_beta(alpha, 200_000, torch.Generator().manual_seed(0))
    assert ((draws >= 0) & (draws <= 1)).all()
    var = 1.0 / (4.0 * (2.0 * alpha + 1.0))  # Var of Beta(a, a)
    assert abs(draws.mean().item() - 0.5) < 0.01
    assert abs(draws.var().item() - var) < 0.01 * var + 2e-3


def test_per_sample_lam_and_validation():
    p = rmix_fast.sample_rmix_params(8, per_sample_lam=True, grids=(8,), generator=torch.Generator().manual_seed(1))
    assert p.grid == 8 and p.lam.unique().numel() == 8
    with pytest.raises(ValueError, match="alpha"):
        rmix_fast.sample_rmix_params(4, alpha=0.0)
    with pytest.raises(ValueError, match="grids"):
        rmix_fast.sample_rmix_params(4, grids=())
    with pytest.raises(ValueError, match="batch_size"):
        rmix_fast.sample_rmix_params(-1)


def test_to_device_gives_a_contiguous_copy_of_the_values():
    lam = torch.rand(1).expand(5)
    moved = to_device(lam, "cpu")
    assert moved.is_contiguous() and torch.equal(moved, lam)
    p = rmix_fast.sample_rmix_params(6, generator=torch.Generator().manual_seed(0))
    assert p.lam.is_contiguous() and p.lam.dtype == torch.float32 and p.q.dtype == torch.float32


@pytest.mark.cuda
def test_to_device_does_not_block_on_cuda():
    draws = [torch.randperm(7), torch.rand(1).expand(7), torch.rand(3, 4, 4).to(torch.int8)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        moved = [to_device(t, "cuda") for t in draws]
        p = rmix_fast.sample_rmix_params(7, generator=torch.Generator().manual_seed(0), device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for t, m in zip(draws, moved, strict=True):
        assert m.is_cuda and m.is_contiguous() and torch.equal(m.cpu(), t)
    q = rmix_fast.sample_rmix_params(7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(p.perm.cpu(), q.perm) and torch.equal(p.lam.cpu(), q.lam) and p.grid == q.grid
