"""R-Mix's own behaviour (the family's shared behaviour: ``test_mixer_family.py``)."""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from tests.helpers.mixer_cases import batch, make


def test_mixing_is_differentiable_when_x_requires_grad():
    x, y, grad = batch()
    x.requires_grad_(True)
    x_mix, _ = make(rmix_fast.RMix)(x, y, grad)
    x_mix.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_needs_the_input_gradient_and_grids_that_divide_the_image():
    x, y, grad = batch()
    with pytest.raises(ValueError, match="RMix needs grad"):
        make(rmix_fast.RMix)(x, y)
    with pytest.raises(ValueError, match=r"grids \[4\] do not divide"):
        make(rmix_fast.RMix, grids=(2, 4))(x[..., :6, :6], y, grad[..., :6, :6])
    with pytest.raises(ValueError, match="grad must have x's shape"):
        make(rmix_fast.RMix)(x, y, grad[:, :1])


def test_saliency_map_is_the_normalised_cell_saliency_of_the_drawn_grid():
    x, y, grad = batch()
    mixer = make(rmix_fast.RMix)
    mixer(x, y, grad)
    p = mixer.last_params
    saliency = mixer.saliency_map(grad, p)
    torch.testing.assert_close(saliency, rmix_fast.saliency_grid(grad, p.grid))
    assert torch.equal(p.region_map(), rmix_fast.regions_from_mask(p.mask, p.perm))
