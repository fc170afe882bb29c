"""SAGE's reference against the float64 transcription of its semantics and the transcription against the
published algorithm (``helpers/sage_published.py``: the authors' canvas, ``affine_grid`` / ``grid_sample``
shifts and torchvision's blur) on square images; the invariants of the search and the mask."""

from __future__ import annotations

import pytest
import torch

from rmix_fast.reference import sage as ref
from rmix_fast.sampling import sage_candidates, shift_of_index
from tests.helpers.sage_published import coord_to_offsets, published_sage, torchvision_blur
from tests.helpers.sage_transcription import smoothed_saliency, transcribe


def _inputs(B: int, C: int, H: int, W: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    grad = torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * torch.rand(B, 1, H, W, generator=g) ** 4
    return x, grad, torch.randperm(B, generator=g), torch.rand(B, generator=g, dtype=torch.float64), g


@pytest.mark.parametrize(("B", "C", "H", "W", "K"), [(5, 3, 9, 13, 12), (1, 1, 3, 2, 6), (4, 3, 16, 16, 20)])
def test_the_reference_is_the_transcription(B, C, H, W, K):
    x, grad, perm, lam, g = _inputs(B, C, H, W, seed=H * W)
    offsets = torch.stack(
        [torch.randint(-(H - 1), H, (K,), generator=g), torch.randint(-(W - 1), W, (K,), generator=g)], 1
    )
    want = transcribe(x, grad, perm, lam, offsets)
    mixed, lam_eff, shift, weight = ref.sage_forward(x, grad, perm, lam, offsets, 1.0, 5)
    assert torch.equal(shift, want.shift)
    torch.testing.assert_close(mixed, want.mixed, rtol=0, atol=1e-14)
    torch.testing.assert_close(weight, want.weight, rtol=0, atol=1e-14)
    torch.testing.assert_close(lam_eff, want.lam_eff.float())
    a, c = ref._own_and_partner(grad, perm, lam, 1.0, 5)
    torch.testing.assert_close(ref.sage_scores(a, c, offsets), want.scores, rtol=1e-13, atol=0)


@pytest.mark.parametrize(("w", "K", "seed"), [(8, 225, 0), (16, 40, 1), (16, 961, 2)])
def test_the_transcription_is_the_published_algorithm(w, K, seed):
    x, grad, perm, _, g = _inputs(6, 3, w, w, seed)
    alpha = 0.37
    P = 2 * w - 1
    axis = torch.linspace(1, P, P, dtype=torch.int64)
    xv, yv = torch.meshgrid(axis, axis, indexing="xy")
    coord = torch.stack((xv.flatten(), yv.flatten()))[:, torch.randperm(P * P, generator=g)[:K]]
    offsets = coord_to_offsets(coord, w)
    mixed, lam, best = published_sage(x, grad, perm, alpha, offsets)
    want = transcribe(x, grad, perm, alpha, offsets)
    assert torch.equal(want.shift, best)
    torch.testing.assert_close(want.mixed, mixed, rtol=0, atol=1e-12)
    torch.testing.assert_close(want.lam_eff, lam, rtol=0, atol=1e-12)


def test_the_candidate_order_is_the_published_codes():
    # the sampler's index -> shift map is the authors' flattened coord grid
    w = 5
    P = 2 * w - 1
    axis = torch.linspace(1, P, P, dtype=torch.int64)
    xv, yv = torch.meshgrid(axis, axis, indexing="xy")
    coord = torch.stack((xv.flatten(), yv.flatten()))
    assert torch.equal(shift_of_index(torch.arange(P * P), w, w), coord_to_offsets(coord, w))
    assert sage_candidates(32, 32) == 3969  # (2 * 32 - 1) ** 2: 39 candidates at rand_pos 0.01


def test_the_blur_is_torchvisions_formula():
    _, grad, _, _, _ = _inputs(3, 3, 12, 12, seed=4)
    s = grad.abs().mean(1, keepdim=True)
    want = torchvision_blur(s, 5, 1.0)[:, 0]
    torch.testing.assert_close(ref.sage_saliency(grad), want, rtol=0, atol=1e-15)
    torch.testing.assert_close(smoothed_saliency(grad), want, rtol=0, atol=1e-15)
    w = ref.blur_weights(5, 1.0, torch.float64)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(w, w.flip(0))


def test_reflect_index_repeats_for_tiny_images():
    i = torch.arange(-5, 8)
    assert ref.reflect_index(i, 1).tolist() == [0] * 13
    assert ref.reflect_index(i, 2).tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert ref.reflect_index(i, 3).tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1]


def test_invariants_of_the_search_and_the_mask():
    x, grad, perm, lam, g = _inputs(6, 3, 10, 7, seed=5)
    offsets = torch.stack([torch.randint(-9, 10, (25,), generator=g), torch.randint(-6, 7, (25,), generator=g)], 1)
    want = transcribe(x, grad, perm, lam, offsets)
    index = [offsets.tolist().index(d) for d in want.shift.tolist()]
    chosen = want.scores[torch.arange(6), index]
    assert (chosen[:, None] >= want.scores).all()  # the chosen score is the largest
    assert ((want.weight >= 0) & (want.weight <= 1)).all()
    assert ((want.lam_eff >= 0) & (want.lam_eff <= 1)).all()
    shifted = transcribe(x, grad, perm, lam, offsets, force_shift=want.shift)
    partner = (shifted.mixed - want.weight[:, None] * x) / (1 - want.weight[:, None]).clamp_min(1e-300)
    inside = (want.weight < 1 - 1e-9)[:, None].expand_as(x)
    lo, hi = torch.zeros(()), torch.ones(())  # x in [0, 1): the partner's pixels (or 0 outside) too
    assert ((partner[inside] >= lo - 1e-9) & (partner[inside] <= hi + 1e-9)).all()


def test_zero_and_non_finite_saliency_give_the_uniform_map_where_the_published_code_gives_nan():
    x, grad, perm, lam, _ = _inputs(3, 3, 8, 8, seed=6)
    grad[0] = 0
    grad[1, 0, 0, 0] = float("nan")
    s = ref.sage_saliency(grad)
    assert torch.equal(s[0], torch.ones(8, 8)) and torch.equal(s[1], torch.ones(8, 8))
    mixed, lam_eff, _, _ = ref.sage_forward(x, grad, perm, lam, torch.zeros(1, 2, dtype=torch.int64), 1.0, 5)
    assert torch.isfinite(mixed).all() and torch.isfinite(lam_eff).all()
    published, _, _ = published_sage(x, grad, perm, 0.5, torch.zeros(1, 2, dtype=torch.int64))
    assert published.isnan().any()  # the divergence documented in the README
