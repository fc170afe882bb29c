"""Autograd: gradcheck on the reference, backward of every backend equals the reference's,
torch.library opcheck, and torch.compile(fullgraph=True) with forward and backward."""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from rmix_fast import reference
from rmix_fast._ops import OPS
from tests.rmix_cases import BACKENDS, BLEND_TOL, DEVICE, as_tensor, layout, make_case


def test_gradcheck_reference_float64():
    case = make_case(5, 2, 4, 6, grid=2, dtype=torch.float64, seed=20, device=torch.device("cpu"))
    x = case.x.clone().requires_grad_()

    def f(x):
        return rmix_fast.rmix(x, case.grad, **case.kwargs(), backend="reference")[0]

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-8)


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
    want = reference.blend_backward(grad_out, mask, case.perm, lam)
    rtol, atol = BLEND_TOL[dtype]
    torch.testing.assert_close(x.grad, want, rtol=rtol, atol=atol)


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    case = make_case(4, 3, 8, 8, grid=2, seed=25)
    x = case.x.detach().clone().requires_grad_()
    lam = as_tensor(case.lam, 4, torch.float32, DEVICE)
    args = (x, case.grad, case.perm, lam, case.q, 2, True)
    torch.library.opcheck(OPS[backend].forward, args)
    _, _, mask = OPS[backend].forward(*args)
    torch.library.opcheck(OPS[backend].backward, (torch.randn_like(x), mask, case.perm, lam))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    case = make_case(4, 3, 8, 8, grid=2, x_layout="channels_last", seed=26)

    def step(x, grad, perm, q):
        mixed, lam_eff = rmix_fast.rmix(x, grad, perm=perm, lam=0.3, q=q, grid=2, backend=backend)
        return (mixed * mixed).sum(), lam_eff

    compiled = torch.compile(step, fullgraph=True)
    x1 = case.x.detach().clone().requires_grad_()
    x2 = case.x.detach().clone().requires_grad_()
    loss1, lam1 = step(x1, case.grad, case.perm, case.q)
    loss2, lam2 = compiled(x2, case.grad, case.perm, case.q)
    loss1.backward()
    loss2.backward()
    torch.testing.assert_close(loss2, loss1)
    torch.testing.assert_close(lam2, lam1)
    torch.testing.assert_close(x2.grad, x1.grad)
    # the content checks run inside the op, so compiled code still rejects a bad perm
    with pytest.raises(ValueError, match="perm"):
        compiled(x2, case.grad, torch.zeros_like(case.perm), case.q)
