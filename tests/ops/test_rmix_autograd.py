"""Autograd of ``rmix``: the backward of every backend equals the reference's, through both paths of
each sample, and no gradient flows to grad, lam or q. gradcheck, opcheck and torch.compile(fullgraph=True):
``test_op_contracts.py``."""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from rmix_fast import reference
from tests.helpers.cases import BACKENDS, DEVICE, as_tensor, assert_blend_equal, layout, make_case


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last", "strided"])
def test_backward_matches_reference(backend, dtype, x_layout):
    case = make_case(7, 3, 8, 12, grid=4, dtype=dtype, x_layout=x_layout, seed=21)
    x = case.x.detach().clone().requires_grad_()
    mixed, _, mask = rmix_fast.rmix(x, case.grad, **case.kwargs(), backend=backend, return_mask=True)
    grad_out = layout(
        torch.randn(mixed.shape, generator=torch.Generator().manual_seed(22)).to(dtype).to(DEVICE), x_layout
    )
    mixed.backward(grad_out)
    lam = as_tensor(case.lam, 7, reference.accumulate_dtype(dtype), x.device)
    want = reference.rmix_backward(grad_out, mask, case.perm, lam)
    assert_blend_equal(backend, x.grad, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_through_both_paths_and_expanded_grad(backend):
    """sum() hands backward an expanded (stride-0) grad; each x[b] gets its own share plus its partner share."""
    case = make_case(6, 3, 8, 8, grid=2, lam=0.25, seed=23)
    x = case.x.detach().clone().requires_grad_()
    mixed, _, mask = rmix_fast.rmix(x, case.grad, **case.kwargs(), backend=backend, return_mask=True)
    mixed.sum().backward()
    # With an all-ones upstream gradient the weights of each pixel of x[b] add up to
    # own weight (lam / 1 / 0) + weight as partner in mixed[src] (1-lam / 1 / 0).
    src = torch.argsort(case.perm)
    inter = mask == mask[case.perm]
    own = torch.where(inter, 0.25, mask.float())
    via = torch.where(inter[src], 0.75, (mask & ~mask[src]).float())
    want = (own + via).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).expand_as(x)
    torch.testing.assert_close(x.grad, want.to(x.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_gradient_for_grad_lam_q(backend):
    case = make_case(4, 3, 8, 8, grid=2, seed=24)
    x = case.x.detach().clone().requires_grad_()
    grad = case.grad.detach().clone().requires_grad_()
    lam = torch.full((4,), 0.3, device=DEVICE, requires_grad=True)
    mixed, lam_eff = rmix_fast.rmix(x, grad, perm=case.perm, lam=lam, q=case.q, grid=2, backend=backend)
    assert not lam_eff.requires_grad
    mixed.sum().backward()
    assert x.grad is not None and grad.grad is None and lam.grad is None
