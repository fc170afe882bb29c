"""Every backend reads ``lam``, ``q`` and ``perm`` through their strides: a 0-d tensor (expanded to the batch
with stride 0), an explicit ``expand`` and a strided view give the reference's result, forward and backward,
in ``rmix`` and ``blend_regions``."""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from tests.helpers.cases import BACKENDS, DEVICE, make_case, make_regions

B = 6


def level_tensor(kind: str, values: torch.Tensor) -> torch.Tensor:
    """(B,) ``values`` (or their first entry) as a 0-d tensor, an expanded 0-d tensor, a strided view or as is."""
    if kind == "0-d":
        return values[0].clone()
    if kind == "expanded":
        return values[0].clone().expand(B)
    if kind == "strided":
        wide = torch.zeros(B, 3, dtype=values.dtype, device=values.device)
        wide[:, 1] = values
        return wide[:, 1]
    return values.contiguous()


def index_tensor(kind: str, perm: torch.Tensor) -> torch.Tensor:
    if kind == "strided":
        wide = torch.zeros(B, 2, dtype=perm.dtype, device=perm.device)
        wide[:, 0] = perm
        return wide[:, 0]
    return perm


def dense(t: torch.Tensor) -> torch.Tensor:
    """The same values as a fresh contiguous (B,) tensor."""
    return t.expand(B).contiguous() if t.dim() == 0 else t.contiguous()


KINDS = ["0-d", "expanded", "strided"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_rmix(backend, kind):
    case = make_case(B=B, H=16, W=12, grid=4, seed=11)
    lam = level_tensor(kind, torch.rand(B, generator=torch.Generator().manual_seed(1)).to(DEVICE))
    q = level_tensor(kind, torch.tensor([0.33, 0.5, 0.0, 1.0, 0.77, 0.11], device=DEVICE))
    perm = index_tensor(kind, case.perm)
    x = case.x.detach().requires_grad_()
    x_ref = case.x.detach().requires_grad_()
    got = rmix_fast.rmix(x, case.grad, perm=perm, lam=lam, q=q, grid=4, backend=backend, return_mask=True)
    want = rmix_fast.rmix(x_ref, case.grad, perm=dense(perm), lam=dense(lam), q=dense(q), grid=4,
                          backend="reference", return_mask=True)  # fmt: skip
    assert torch.equal(got[2], want[2]), "masks differ"
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    grad_out = torch.randn(case.x.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    (got_grad,) = torch.autograd.grad(got[0], x, grad_out)
    (want_grad,) = torch.autograd.grad(want[0], x_ref, grad_out)
    assert torch.equal(got_grad, want_grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_blend_regions(backend, kind):
    case = make_case(B=B, H=12, W=10, seed=12)
    regions = make_regions(B, 3, 5, seed=13)
    lam = level_tensor(kind, torch.rand(B, generator=torch.Generator().manual_seed(3)).to(DEVICE))
    perm = index_tensor(kind, case.perm)
    x = case.x.detach().requires_grad_()
    x_ref = case.x.detach().requires_grad_()
    mixed, lam_eff = rmix_fast.blend_regions(x, perm=perm, lam=lam, regions=regions, backend=backend)
    want, want_lam_eff = rmix_fast.blend_regions(x_ref, perm=dense(perm), lam=dense(lam), regions=regions,
                                                 backend="reference")  # fmt: skip
    assert torch.equal(mixed, want) and torch.equal(lam_eff, want_lam_eff)
    grad_out = torch.randn(case.x.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    (got_grad,) = torch.autograd.grad(mixed, x, grad_out)
    (want_grad,) = torch.autograd.grad(want, x_ref, grad_out)
    assert torch.equal(got_grad, want_grad)
