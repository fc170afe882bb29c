"""AdAutoMix's draws: λ and the two sets of sources as AdAutoMix.forward_train makes them, and the λ-margin fallback."""

from __future__ import annotations

import math

import pytest
import torch

from rmix_fast.adautomix import AdAutoMixDraw, lam_fallback, sample_adautomix
from rmix_fast.adautomix import draws as draws_module
from rmix_fast.sampling import sample_beta


def draw(batch: int, n: int, seed: int, alpha: float = 1.0) -> AdAutoMixDraw:
    return sample_adautomix(batch, n, alpha=alpha, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_reproducible_and_valid(n):
    a, b = draw(12, n, 7), draw(12, n, 7)
    for field in ("index_mb", "index_bb", "lam_mb", "lam_bb"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.lam_mb_host == b.lam_mb_host and a.lam_bb_host == b.lam_bb_host and a.raw == b.raw
    assert not torch.equal(a.index_bb, draw(12, n, 8).index_bb)
    assert a.n_sources == n
    for index in (a.index_mb, a.index_bb):
        assert index.shape == (n, 12) and index.dtype == torch.int64 and index.is_contiguous()
        assert torch.equal(index.sort(dim=1).values, torch.arange(12).expand(n, 12)), "each row is a permutation"
    for host, dev in ((a.lam_mb_host, a.lam_mb), (a.lam_bb_host, a.lam_bb)):
        assert len(host) == n and math.fsum(host) == pytest.approx(1.0, abs=1e-15)
        assert dev.dtype == torch.float64 and dev.shape == (n,)
        torch.testing.assert_close(dev, torch.tensor(host, dtype=torch.float64), atol=0, rtol=0)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_each_lam_strictly_inside_and_summing_to_one(n):
    for seed in range(200):
        d = draw(4, n, seed)
        for lam in (d.lam_mb_host, d.lam_bb_host):
            assert all(0.0 < v < 1.0 for v in lam), (seed, lam)
            assert math.fsum(lam) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("n", [3, 4])
def test_order_and_structure_of_the_co_mix_draws(n):
    """N >= 3: mb = [index_mb, index_bb, fresh...], bb = N fresh perms, one normalised λ for both sides."""
    d = draw(10, n, 3, alpha=0.7)
    g = torch.Generator().manual_seed(3)
    index_bb = torch.randperm(10, generator=g)
    index_mb = torch.randperm(10, generator=g)
    raw = sample_beta(0.7, n, g)
    extra = [torch.randperm(10, generator=g) for _ in range(n - 2)]
    classifier = [torch.randperm(10, generator=g) for _ in range(n)]
    assert torch.equal(d.index_mb, torch.stack([index_mb, index_bb, *extra]))
    assert torch.equal(d.index_bb, torch.stack(classifier))
    assert d.raw == tuple(raw.tolist())
    assert d.lam_mb_host == d.lam_bb_host == tuple((raw / raw.sum()).tolist())
    assert torch.equal(d.lam_mb, d.lam_bb)


def test_order_and_structure_of_the_two_source_draws():
    """N = 2: source 0 is the batch itself; each side has its own unnormalised Beta ratio (lam, 1 - lam)."""
    d = draw(10, 2, 5, alpha=2.0)
    g = torch.Generator().manual_seed(5)
    index_bb = torch.randperm(10, generator=g)
    index_mb = torch.randperm(10, generator=g)
    raw = sample_beta(2.0, 2, g).tolist()
    assert torch.equal(d.index_mb, torch.stack([torch.arange(10), index_mb]))
    assert torch.equal(d.index_bb, torch.stack([torch.arange(10), index_bb]))
    assert d.raw == tuple(raw)
    assert d.lam_mb_host == (raw[0], 1.0 - raw[0])
    assert d.lam_bb_host == (raw[1], 1.0 - raw[1])


def test_draws_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    draw(8, 3, 0)
    assert torch.equal(state, torch.get_rng_state())


def test_all_betas_underflowing_gives_uniform_lam(monkeypatch):
    monkeypatch.setattr(draws_module, "sample_beta", lambda alpha, n, generator: torch.zeros(n, dtype=torch.float64))
    d = draw(4, 3, 0)
    assert d.lam_mb_host == d.lam_bb_host == (1 / 3, 1 / 3, 1 / 3)


def test_fallback_toggles_at_the_margin():
    m = 0.03125  # a dyadic margin: 1 - (1 - m) == m exactly, so the boundary itself can be tested
    below, above = math.nextafter(m, 0.0), math.nextafter(m, 1.0)
    top = 1.0 - m
    for n in (2, 3):

        def lam(v: float, n: int = n) -> tuple[float, ...]:
            return (v, 1.0 - v) if n == 2 else (v, (1.0 - v) / 2, (1.0 - v) / 2)

        assert lam_fallback(lam(below), m) and lam_fallback(lam(m), m)
        assert not lam_fallback(lam(above), m) and not lam_fallback(lam(0.5), m)
        assert not lam_fallback(lam(math.nextafter(top, 0.0)), m)
        assert lam_fallback(lam(math.nextafter(top, 1.0)), m)
    # exactly at 1 - margin the two code paths differ: `margin >= 1 - lam` (N = 2), `margin > 1 - lam` (N >= 3)
    assert lam_fallback((top, m), m)
    assert not lam_fallback((top, m / 2, m / 2), m)
    # the configs' 0.03, evaluated as the code does: 1 - 0.97 is 0.030000000000000027 in float64
    assert lam_fallback((0.03, 0.97), 0.03) and not lam_fallback((0.97, 0.03), 0.03)
    # margin 0 is the code's "off", which still catches a λ_0 of exactly 0
    assert lam_fallback((0.0, 1.0), 0.0) and not lam_fallback((1e-300, 1.0), 0.0)
    assert lam_fallback(torch.tensor([0.01, 0.99], dtype=torch.float64), 0.03)


def test_draw_fallback_reads_the_classifier_lam():
    d = draw(4, 2, 0)
    lam_bb0 = d.lam_bb_host[0]
    assert d.fallback(0.0) is False
    assert d.fallback(0.49) is (lam_bb0 <= 0.49 or 1 - lam_bb0 <= 0.49)


@pytest.mark.parametrize("n_sources", [0, 1, -2, True, 2.0])
def test_bad_n_sources(n_sources):
    with pytest.raises(ValueError, match="n_sources"):
        sample_adautomix(4, n_sources, generator=torch.Generator())


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        sample_adautomix(4, 3, alpha=alpha, generator=torch.Generator())


def test_bad_batch():
    with pytest.raises(ValueError, match="batch"):
        sample_adautomix(-1, 3)


@pytest.mark.parametrize("margin", [-0.01, 0.5, 0.7, float("nan"), True])
def test_bad_margin(margin):
    with pytest.raises(ValueError, match="margin"):
        lam_fallback((0.5, 0.5), margin)


def test_bad_lam_for_fallback():
    with pytest.raises(ValueError, match="lam"):
        lam_fallback((1.0,), 0.03)
    with pytest.raises(ValueError, match="host"):
        lam_fallback(torch.tensor([0.5, 0.5], device="meta"), 0.03)


@pytest.mark.cuda
def test_draw_on_cuda_equals_the_cpu_draw():
    a = sample_adautomix(16, 3, generator=torch.Generator().manual_seed(1), device="cuda")
    b = draw(16, 3, 1)
    assert a.index_mb.is_cuda and a.lam_bb.is_cuda
    assert torch.equal(a.index_mb.cpu(), b.index_mb) and torch.equal(a.index_bb.cpu(), b.index_bb)
    assert torch.equal(a.lam_mb.cpu(), b.lam_mb) and a.lam_mb_host == b.lam_mb_host
    with pytest.raises(ValueError, match="generator"):
        sample_adautomix(4, 3, generator=torch.Generator(device="cuda"))
