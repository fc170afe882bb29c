"""Bit-exactness across backends: given the same region map (for R-Mix, the same mask), every backend's
``mixed``, ``lam_eff`` and gradient equal the reference's bit for bit.

Every backend evaluates the same formulas, each operation rounded (torch.lerp's two-sided lerp in float32,
float64 for float64 images; no FMA contraction: the Triton kernels are compiled without it, the CUDA
kernels spell out the rounding, ``tests/build`` checks the PTX), then rounds to the image dtype to
nearest-even. One exception, in tests only: the Triton *interpreter* converts float32 to bfloat16 by
truncation, so interpreted bfloat16 blends may differ from the others by one unit in the last place;
compiled Triton rounds as the others do.
"""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from rmix_fast import reference
from tests.helpers.cases import BACKENDS, DEVICE, assert_blend_equal, layout, make_case, make_regions

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last", "strided"])
def test_blend_regions_bit_exact(backend, dtype, x_layout):
    case = make_case(B=6, H=12, W=20, dtype=dtype, x_layout=x_layout, seed=3)
    regions = make_regions(6, 3, 5, seed=4)
    x = case.x.detach().requires_grad_()
    mixed, lam_eff = rmix_fast.blend_regions(x, perm=case.perm, lam=case.lam, regions=regions, backend=backend)
    want, want_lam_eff = reference.blend_regions_forward(case.x, regions, case.perm, case.lam)
    assert_blend_equal(backend, mixed, want)
    assert torch.equal(lam_eff, want_lam_eff)
    grad_out = layout(torch.randn(mixed.shape, generator=torch.Generator().manual_seed(5)).to(dtype), x_layout)
    (grad_x,) = torch.autograd.grad(mixed, x, grad_out.to(DEVICE))
    assert_blend_equal(backend, grad_x, reference.blend_regions_backward(grad_out.to(DEVICE), regions, case.perm,
                                                                        case.lam))  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rmix_bit_exact_given_its_mask(backend, dtype):
    case = make_case(B=6, H=16, W=24, grid=4, dtype=dtype, x_layout="channels_last", seed=6)
    mixed, lam_eff, mask = rmix_fast.rmix(case.x, case.grad, **case.kwargs(), backend=backend, return_mask=True)
    regions = rmix_fast.regions_from_mask(mask, case.perm)
    want, want_lam_eff = reference.blend_regions_forward(case.x, regions, case.perm, case.lam)
    assert_blend_equal(backend, mixed, want)
    assert torch.equal(lam_eff, want_lam_eff)
