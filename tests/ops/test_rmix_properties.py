"""Property tests (hypothesis) for R-Mix's invariants, on every backend."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import rmix_fast
from rmix_fast import reference
from tests.helpers.cases import BACKENDS, DEVICE, TRITON_INTERPRETED, assert_blend_equal

# Each property runs many examples: under the Triton interpreter (serial Python) that is the slow tier's job;
# test_rmix.py compares the interpreted backend with the reference in the quick one.
pytestmark = pytest.mark.parametrize(
    "backend", [pytest.param(b, marks=[pytest.mark.slow] * (b == "triton" and TRITON_INTERPRETED)) for b in BACKENDS]
)


@st.composite
def batches(draw):
    B = draw(st.integers(1, 6))
    C = draw(st.sampled_from([1, 3]))
    p = draw(st.sampled_from([1, 2, 4]))
    H = p * draw(st.integers(1, 3))
    W = p * draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g).to(dtype).to(DEVICE)
    grad = torch.randn(B, C, H, W, generator=g).to(DEVICE)
    perm = torch.randperm(B, generator=g).to(DEVICE)
    lam = torch.rand(B, generator=g).to(DEVICE)
    q = torch.rand(B, generator=g).to(DEVICE)
    return x, grad, perm, lam, q, p


def regions(mask, perm, H, W):
    """Per pixel (B, 1, H, W): 0 blended, 1 own copied, 2 partner copied."""
    partner = mask[perm]
    code = torch.where(mask == partner, 0, torch.where(mask, 1, 2))
    p = mask.shape[-1]
    return code.repeat_interleave(H // p, 1).repeat_interleave(W // p, 2).unsqueeze(1)


@given(batches())
def test_pixels_are_blends_or_copies_of_the_right_source(backend, batch):
    x, grad, perm, lam, q, p = batch
    mixed, lam_eff, mask = rmix_fast.rmix(x, grad, perm=perm, lam=lam, q=q, grid=p, backend=backend, return_mask=True)
    H, W = x.shape[-2:]
    code = regions(mask, perm, H, W).expand_as(x)
    xp = x[perm]
    assert torch.equal(mixed[code == 1], x[code == 1])
    assert torch.equal(mixed[code == 2], xp[code == 2])
    cd = reference.accumulate_dtype(x.dtype)
    lam4 = lam.to(cd).view(-1, 1, 1, 1).expand_as(x)
    blend = (lam4 * x.to(cd) + (1 - lam4) * xp.to(cd)).to(x.dtype)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2}[x.dtype]
    torch.testing.assert_close(mixed[code == 0], blend[code == 0], rtol=tol, atol=tol)
    # the blended value lies between its two sources
    lo, hi = torch.minimum(x, xp), torch.maximum(x, xp)
    assert ((mixed >= lo) & (mixed <= hi))[code == 0].all()
    assert ((lam_eff >= 0) & (lam_eff <= 1)).all()


@given(batches())
def test_all_top_masks_give_plain_mixup(backend, batch):
    x, grad, perm, lam, _, p = batch
    mixed, lam_eff, mask = rmix_fast.rmix(x, grad, perm=perm, lam=lam, q=0.0, grid=p, backend=backend, return_mask=True)
    assert mask.all()
    cd = reference.accumulate_dtype(x.dtype)
    want = reference.lerp(x[perm].to(cd), x.to(cd), lam.to(cd).view(-1, 1, 1, 1)).to(x.dtype)
    assert_blend_equal(backend, mixed, want)
    torch.testing.assert_close(lam_eff, lam.float())


@given(batches())
def test_identity_perm_returns_x(backend, batch):
    x, grad, _, lam, q, p = batch
    perm = torch.arange(x.shape[0], device=DEVICE)
    mixed, lam_eff = rmix_fast.rmix(x, grad, perm=perm, lam=lam, q=q, grid=p, backend=backend)
    assert torch.equal(mixed, x)
    torch.testing.assert_close(lam_eff, lam.float())


@given(batches())
def test_label_weights_are_the_mixed_area(backend, batch):
    """lam_eff + partner's weight == 1, and lam_eff equals the mean own-weight over cells."""
    x, grad, perm, lam, q, p = batch
    _, lam_eff, mask = rmix_fast.rmix(x, grad, perm=perm, lam=lam, q=q, grid=p, backend=backend, return_mask=True)
    partner = mask[perm]
    own_weight = torch.where(mask == partner, lam.view(-1, 1, 1).double(), mask.double())
    torch.testing.assert_close(lam_eff.double(), own_weight.flatten(1).mean(1), rtol=1e-6, atol=1e-7)
