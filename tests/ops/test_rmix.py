"""Every backend against the reference over the equivalence matrix of the core issue."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.cases import BACKENDS, DEVICE, PAPER_LEVELS, check_against_reference, make_case

pytestmark = pytest.mark.parametrize("backend", BACKENDS)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = ["contiguous", "channels_last", "strided", "transposed"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("x_layout", LAYOUTS)
def test_dtypes_and_layouts(backend, dtype, x_layout):
    # grad in a different layout than x, so both address paths run in one call
    grad_layout = {"contiguous": "channels_last", "channels_last": "contiguous"}.get(x_layout, x_layout)
    case = make_case(5, 3, 12, 20, grid=4, dtype=dtype, x_layout=x_layout, grad_layout=grad_layout, seed=1)
    check_against_reference(backend, case)


@pytest.mark.parametrize(
    "H,W,grid",
    [
        (32, 32, 1),
        (32, 32, 2),
        (32, 32, 4),
        (32, 32, 8),
        (32, 32, 16),
        (32, 32, 32),
        (16, 48, 8),
        (24, 8, 4),
        (10, 14, 2),
    ],
)
def test_grids_and_non_square(backend, H, W, grid):
    check_against_reference(backend, make_case(3, 3, H, W, grid=grid, seed=2))


@pytest.mark.parametrize("B,C", [(1, 3), (2, 1), (7, 4), (64, 3)])
def test_batch_and_channels(backend, B, C):
    check_against_reference(backend, make_case(B, C, 8, 12, grid=4 if B < 64 else 2, seed=3))


@pytest.mark.parametrize("q", [0.0, 1.0, *PAPER_LEVELS[1:]])
def test_scalar_percentile_levels(backend, q):
    check_against_reference(backend, make_case(6, 3, 16, 16, grid=4, q=q, seed=4))


@pytest.mark.parametrize("lam", [0.0, 1.0, 0.37, "per_sample"])
def test_lambda(backend, lam):
    check_against_reference(backend, make_case(6, 3, 16, 16, grid=2, lam=lam, seed=5))


@pytest.mark.parametrize(
    "x_dtype,grad_dtype",
    [(torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.float16),
     (torch.float32, torch.bfloat16), (torch.float64, torch.float32), (torch.float32, torch.float64)],
    ids=str,
)  # fmt: skip
def test_grad_dtype_differs(backend, x_dtype, grad_dtype):
    check_against_reference(backend, make_case(4, 3, 8, 8, grid=2, dtype=x_dtype, grad_dtype=grad_dtype, seed=6))


def test_tied_zero_and_non_finite_saliency(backend):
    case = make_case(6, 3, 16, 16, grid=4, seed=7)
    g = case.grad.clone()
    g[0] = 1.0  # every cell tied
    g[1, :, :8] = 2.0  # two tied levels
    g[1, :, 8:] = 1.0
    g[2] = 0.0  # all-zero saliency -> all top
    g[3, 1, 5, 5] = float("inf")
    g[4, 0, 0, 0] = float("nan")
    case.grad = g
    check_against_reference(backend, case)
    _, _, mask = __import__("rmix_fast").rmix(case.x, g, **case.kwargs(), backend=backend, return_mask=True)
    assert mask[2:5].all(), "zero and non-finite saliency must give an all-top mask"
    assert mask[0].all(), "fully tied saliency is >= its own percentile everywhere"


def test_non_finite_images_are_copied_exactly(backend):
    """Where a cell is copied, the other image's inf/NaN must not leak in (copies select, never multiply)."""
    case = make_case(4, 3, 8, 8, grid=2, lam=0.5, seed=8)
    x = case.x.clone()
    x[case.perm[0]] = float("nan")  # partner of sample 0
    case.x = x
    import rmix_fast

    mixed, _, mask = rmix_fast.rmix(x, case.grad, **case.kwargs(), backend=backend, return_mask=True)
    own_only = mask[0] & ~mask[case.perm[0]]
    px = own_only.repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert torch.equal(mixed[0][:, px], x[0][:, px])


def test_zero_batch(backend):
    import rmix_fast

    x = torch.empty(0, 3, 8, 8, device=DEVICE)
    mixed, lam_eff = rmix_fast.rmix(x, x, perm=torch.empty(0, dtype=torch.long, device=DEVICE), lam=0.5, q=0.5,
                                    grid=2, backend=backend)  # fmt: skip
    assert mixed.shape == x.shape and lam_eff.shape == (0,) and lam_eff.dtype == torch.float32


def test_deterministic(backend):
    import rmix_fast

    case = make_case(8, 3, 16, 16, grid=4, seed=9)
    a = rmix_fast.rmix(case.x, case.grad, **case.kwargs(), backend=backend, return_mask=True)
    b = rmix_fast.rmix(case.x, case.grad, **case.kwargs(), backend=backend, return_mask=True)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
