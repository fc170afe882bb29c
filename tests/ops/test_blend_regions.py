"""The region blend (``rmix_fast.blend_regions``): the engine behind R-Mix, Mixup and CutMix.

Every backend against the reference over dtypes, layouts and square / non-square / pixel-exact region
grids (the reference itself: ``test_blend_regions_reference.py``); R-Mix through regions equals ``rmix``;
backward; bad input. opcheck, compile, gradcheck and B = 0: ``test_op_contracts.py``.
"""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from rmix_fast import BLEND, OWN, PARTNER, reference
from tests.helpers.cases import BACKENDS, DEVICE, assert_blend_equal, make_case, make_regions

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
GRIDS = [(1, 1), (3, 5), (4, 2), (12, 10)]  # 12 x 10 images: mixup, odd, non-square, one cell per pixel


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last", "strided"])
def test_backend_matches_reference(backend, dtype, grid, x_layout):
    B = 5
    case = make_case(B=B, H=12, W=10, dtype=dtype, x_layout=x_layout, seed=grid[0] * 7 + grid[1])
    regions = make_regions(B, *grid, seed=grid[1])
    lam = case.lam  # per sample, includes 0 and 1
    mixed, lam_eff = rmix_fast.blend_regions(case.x, perm=case.perm, lam=lam, regions=regions, backend=backend)
    want, want_lam_eff = reference.blend_regions_forward(case.x, regions, case.perm, lam)
    assert mixed.dtype == dtype and mixed.shape == case.x.shape
    if x_layout == "channels_last":
        assert mixed.is_contiguous(memory_format=torch.channels_last)
    assert_blend_equal(backend, mixed, want)
    assert torch.equal(lam_eff, want_lam_eff)
    # copied cells are bit-exact on every backend
    copied = reference.blend_regions._cells_to_pixels(regions != BLEND, 12, 10).expand_as(mixed)
    assert torch.equal(mixed[copied], want[copied])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("code_dtype", [torch.uint8, torch.int32, torch.int64])
def test_any_integer_code_dtype(backend, code_dtype):
    case = make_case(B=4, H=8, W=8)
    regions = make_regions(4, 2, 4, dtype=code_dtype)
    got = rmix_fast.blend_regions(case.x, perm=case.perm, lam=0.3, regions=regions, backend=backend)
    want = rmix_fast.blend_regions(case.x, perm=case.perm, lam=0.3, regions=regions.to(torch.int8), backend=backend)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rmix_is_the_region_blend_of_its_mask(backend):
    case = make_case(B=6, H=16, W=16, grid=4)
    mixed, lam_eff, mask = rmix_fast.rmix(case.x, case.grad, **case.kwargs(), backend=backend, return_mask=True)
    regions = rmix_fast.regions_from_mask(mask, case.perm)
    again, again_lam_eff = rmix_fast.blend_regions(
        case.x, perm=case.perm, lam=case.lam, regions=regions, backend=backend
    )
    assert torch.equal(mixed, again)
    assert torch.equal(lam_eff, again_lam_eff)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_blend_is_mixup_and_a_box_is_cutmix(backend):
    case = make_case(B=4, H=8, W=12)
    x, perm = case.x, case.perm
    mixed, lam_eff = rmix_fast.blend_regions(
        x, perm=perm, lam=0.25, regions=torch.zeros(4, 1, 1, dtype=torch.int8, device=DEVICE), backend=backend
    )
    torch.testing.assert_close(mixed, 0.25 * x + 0.75 * x[perm])
    assert torch.equal(lam_eff, torch.full((4,), 0.25, device=DEVICE))

    regions = torch.full((4, 8, 12), OWN, dtype=torch.int8, device=DEVICE)
    regions[:, 2:6, 3:9] = PARTNER  # a 4 x 6 box: a quarter of the image
    mixed, lam_eff = rmix_fast.blend_regions(x, perm=perm, lam=0.9, regions=regions, backend=backend)
    want = x.clone()
    want[:, :, 2:6, 3:9] = x[perm][:, :, 2:6, 3:9]
    assert torch.equal(mixed, want)
    assert torch.equal(lam_eff, torch.full((4,), 0.75, device=DEVICE))


@pytest.mark.parametrize("backend", BACKENDS)
def test_copies_ignore_non_finite_values_of_the_unused_image(backend):
    x = torch.randn(2, 3, 4, 4, device=DEVICE)
    x[1] = float("inf")
    perm = torch.tensor([1, 0], device=DEVICE)
    regions = torch.tensor([[[OWN]], [[PARTNER]]], dtype=torch.int8, device=DEVICE)
    mixed, _ = rmix_fast.blend_regions(x, perm=perm, lam=0.5, regions=regions, backend=backend)
    assert torch.equal(mixed[0], x[0]) and torch.equal(mixed[1], x[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grid", [(1, 1), (3, 5), (12, 10)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_backward_matches_reference(backend, dtype, grid):
    case = make_case(B=5, H=12, W=10, dtype=dtype, x_layout="channels_last")
    regions = make_regions(5, *grid, seed=3)
    x = case.x.detach().requires_grad_(True)
    mixed, _ = rmix_fast.blend_regions(x, perm=case.perm, lam=case.lam, regions=regions, backend=backend)
    grad_out = torch.randn_like(mixed)
    (got,) = torch.autograd.grad(mixed, x, grad_out)
    want = reference.blend_regions_backward(grad_out, regions, case.perm, case.lam)
    assert_blend_equal(backend, got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unvalidated_codes_outside_0_1_take_the_partner(backend):
    case = make_case(B=4, H=4, W=4)
    regions = torch.tensor([3, -1, 2, 100], dtype=torch.int8, device=DEVICE).view(4, 1, 1)
    mixed, lam_eff = rmix_fast.blend_regions(
        case.x, perm=case.perm, lam=0.5, regions=regions, backend=backend, validate=False
    )
    assert torch.equal(mixed, case.x[case.perm])
    assert torch.equal(lam_eff, torch.zeros(4, device=DEVICE))


BAD = [
    ("regions", lambda r: r.float(), TypeError, "regions must be an integer tensor"),
    ("regions", lambda r: r.bool(), TypeError, "regions must be an integer tensor"),
    ("regions", lambda r: r[:, :1, :1].expand(4, 3, 1), ValueError, "gh dividing H=8"),
    ("regions", lambda r: r[:3], ValueError, r"regions must have shape \(B, gh, gw\)"),
    ("regions", lambda r: r[0], ValueError, r"regions must have shape \(B, gh, gw\)"),
    ("regions", lambda r: r + 3, ValueError, r"regions must hold only 0 \(blend\), 1 \(own\) and 2"),
    ("regions", lambda r: [[0]], TypeError, "regions must be an integer torch.Tensor"),
    ("lam", lambda r: 1.5, ValueError, r"lam must lie in \[0, 1\]"),
    ("perm", lambda r: torch.zeros(4, dtype=torch.int64, device=DEVICE), ValueError, "perm must be a permutation"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("arg", "make", "error", "match"), BAD, ids=[m for *_, m in BAD])
def test_bad_input(backend, arg, make, error, match):
    case = make_case(B=4, H=8, W=6)
    regions = make_regions(4, 2, 3)
    kwargs = {"perm": case.perm, "lam": 0.5, "regions": regions}
    kwargs[arg] = make(regions)
    with pytest.raises(error, match=match):
        rmix_fast.blend_regions(case.x, **kwargs, backend=backend)


def test_regions_from_mask_codes():
    mask = torch.tensor([[[True, False], [True, False]], [[True, True], [False, False]]])
    regions = rmix_fast.regions_from_mask(mask, torch.tensor([1, 0]))
    assert regions.tolist() == [[[BLEND, PARTNER], [OWN, BLEND]], [[BLEND, OWN], [PARTNER, BLEND]]]
    # a 3-cycle is not its own inverse: sample b is compared with perm[b], not with the sample taking b
    mask = torch.tensor([[[True, False]], [[False, False]], [[True, True]]])
    regions = rmix_fast.regions_from_mask(mask, torch.tensor([1, 2, 0]))
    assert regions.tolist() == [[[OWN, BLEND]], [[PARTNER, PARTNER]], [[BLEND, OWN]]]
    with pytest.raises(TypeError, match="mask"):
        rmix_fast.regions_from_mask(mask.int(), torch.tensor([1, 0]))
