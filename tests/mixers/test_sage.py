"""SAGE's own behaviour (the family's shared behaviour: ``test_mixer_family.py``; the op: ``ops/test_sage.py``):
the sampler as the published code draws, the mix is the op on the drawn parameters, its saliency picture,
the published update in rmix-train, and bad arguments."""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from rmix_fast.sampling import sage_candidates, sample_sage_params
from rmix_fast.training.options import parse_args
from tests.helpers.cases import DEVICE
from tests.helpers.mixer_cases import K, batch, make


def test_the_sampler_draws_as_the_published_code():
    g = torch.Generator().manual_seed(0)
    p = sample_sage_params(8, 32, 32, alpha=1.0, upper=0.5, rand_pos=0.01, generator=g)
    assert p.offsets.shape == (39, 2) and p.offsets.dtype == torch.int64  # floor(63 * 63 * 0.01)
    assert len({tuple(d) for d in p.offsets.tolist()}) == 39  # without replacement
    assert (p.offsets.abs() <= 31).all()
    assert p.lam.shape == (8,) and p.lam.unique().numel() == 1 and 0 <= float(p.lam[0]) <= 0.5
    assert sorted(p.perm.tolist()) == list(range(8))
    q = sample_sage_params(8, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(p.offsets, q.offsets) and torch.equal(p.perm, q.perm) and torch.equal(p.lam, q.lam)
    non_square = sample_sage_params(3, 5, 9, rand_pos=1.0, generator=g)
    assert non_square.offsets.shape == (sage_candidates(5, 9), 2)
    assert (non_square.offsets[:, 0].abs() <= 4).all() and (non_square.offsets[:, 1].abs() <= 8).all()
    assert sample_sage_params(2, 2, 2, rand_pos=1e-6, generator=g).offsets.shape == (1, 2)  # at least one
    per_sample = sample_sage_params(6, 8, 8, per_sample_lam=True, upper=0.7, generator=g)
    assert per_sample.lam.unique().numel() == 6 and (per_sample.lam <= 0.7).all()


def test_the_mix_is_the_op_on_the_drawn_parameters():
    x, y, grad = batch()
    mixer = make(rmix_fast.SAGE, upper=0.6, rand_pos=0.05)
    x_mix, _ = mixer(x, y, grad)
    p = mixer.last_params
    mixed, lam_eff, shift = rmix_fast.sage(x, grad, perm=p.perm, lam=p.lam, offsets=p.offsets)
    assert torch.equal(x_mix, mixed) and torch.equal(p.lam_eff, lam_eff) and torch.equal(p.shift, shift)
    assert p.region_map() is None  # a soft per-pixel mask, not a cell map
    assert (p.lam <= 0.6).all()
    saliency = mixer.saliency_map(grad, p)
    torch.testing.assert_close(saliency.sum(dim=(1, 2)), torch.ones(6, device=DEVICE))


def test_the_published_update_in_rmix_train():
    args = parse_args(["--method", "sage"])
    assert (args.clean_loss_weight, args.mix_loss_weight) == (0.3, 0.7)  # update_ratio 0.7
    assert (args.sage_upper, args.rand_pos, args.blur_sigma, args.blur_kernel) == (0.5, 0.01, 1.0, 5)
    given = parse_args(["--method", "sage", "--clean-loss-weight", "0.5", "--mix-loss-weight", "0.5"])
    assert (given.clean_loss_weight, given.mix_loss_weight) == (0.5, 0.5)  # update_ratio 0.5
    recipe = parse_args(["--method", "sage", "--preset", "comixup"])
    assert (recipe.lr, recipe.milestones, recipe.loss, recipe.batch_size) == (0.2, None, "softmax_bce", 100) or (
        recipe.lr == 0.2 and recipe.loss == "softmax_bce" and recipe.batch_size == 100
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"upper": 0.0}, "upper must be"),
        ({"rand_pos": 1.5}, "rand_pos must be"),
        ({"sigma": 0.0}, "sigma must be"),
        ({"kernel_size": 4}, "kernel_size must be an odd int"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rmix_fast.SAGE(K, **kwargs)


def test_needs_the_input_gradient():
    x, y, _ = batch()
    with pytest.raises(ValueError, match="SAGE needs grad"):
        make(rmix_fast.SAGE)(x, y)
