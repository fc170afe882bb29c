"""Every registered op keeps the contract of ``tests/helpers/op_contract.py`` on every backend that runs
here; a new op cannot skip it (its ``OpContract`` must be listed below)."""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from rmix_fast.ops._extension import COMPILED_OPS
from rmix_fast.ops._registry import OPS
from tests.helpers.cases import BACKENDS, DEVICE
from tests.helpers.op_contract import CHECKS, OpContract


def _images(g: torch.Generator, batch: int, dtype: torch.dtype, shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=g).to(dtype)


def _levels(g: torch.Generator, batch: int) -> torch.Tensor:
    lam = torch.rand(batch, generator=g)
    lam[: min(batch, 2)] = torch.tensor([0.0, 1.0])[: min(batch, 2)]  # the lerp's two exact ends
    return lam


def blend_regions_inputs(batch: int, dtype: torch.dtype, shape: tuple[int, int, int]) -> tuple:
    g = torch.Generator().manual_seed(1)
    x = _images(g, batch, dtype, shape)
    regions = torch.randint(0, 3, (batch, 2, 2), generator=g).to(torch.int8)
    return x, regions, torch.randperm(batch, generator=g), _levels(g, batch).to(dtype), True


def rmix_inputs(batch: int, dtype: torch.dtype, shape: tuple[int, int, int]) -> tuple:
    g = torch.Generator().manual_seed(2)
    x, grad = _images(g, batch, dtype, shape), _images(g, batch, dtype, shape)
    q = torch.tensor([0.0, 0.33, 0.5, 1.0])[torch.randint(4, (batch,), generator=g)]
    return x, grad, torch.randperm(batch, generator=g), _levels(g, batch).to(dtype), q, 2, True


def _zero_perm(index: int):
    return lambda a: (*a[:index], torch.zeros_like(a[index]), *a[index + 1 :])


CONTRACTS = {
    "blend_regions": OpContract(
        name="blend_regions",
        inputs=blend_regions_inputs,
        public=lambda a, backend: rmix_fast.blend_regions(a[0], regions=a[1], perm=a[2], lam=a[3], backend=backend),
        break_content=(_zero_perm(2), "perm must be a permutation"),
        bad_arguments=[
            (lambda a: (a[0], a[1].float(), *a[2:]), TypeError, "regions must be an integer tensor"),
            (lambda a: (*a[:2], a[2].float(), *a[3:]), TypeError, "perm must be an integer tensor"),
        ],
    ),
    "rmix": OpContract(
        name="rmix",
        inputs=rmix_inputs,
        public=lambda a, backend: rmix_fast.rmix(
            a[0], a[1], perm=a[2], lam=a[3], q=a[4], grid=a[5], backend=backend, return_mask=True
        ),
        break_content=(_zero_perm(2), "perm must be a permutation"),
        bad_arguments=[
            (lambda a: (a[0], a[1].tolist(), *a[2:]), TypeError, "grad must be a torch.Tensor"),
            (lambda a: (*a[:2], a[2].float(), *a[3:]), TypeError, "perm must be an integer tensor"),
            (lambda a: (*a[:5], 3), ValueError, "grid=3 must divide both H=8 and W=8"),
        ],
    ),
}


def test_every_registered_op_has_a_contract_and_a_compiled_kernel():
    assert set(CONTRACTS) == set(OPS) == set(COMPILED_OPS)


CASES = [(op, backend) for op in CONTRACTS for backend in BACKENDS if backend in OPS[op].forward]


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize(("op", "backend"), CASES, ids=[f"{o}-{b}" for o, b in CASES])
def test_op_contract(op, backend, check):
    CHECKS[check](CONTRACTS[op], backend, DEVICE)
