"""Every registered op keeps the contract of ``tests/helpers/op_contract.py`` on every backend that runs
here; a new op cannot skip it (its ``OpContract`` must be listed below). The C++ schemas are the specs'."""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from rmix_fast.ops._extension import COMPILED_OPS
from rmix_fast.ops._registry import NAMESPACE, OPS
from tests.helpers.cases import BACKENDS, DEVICE, TRITON_INTERPRETED
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
    regions = torch.randint(0, 3, (batch, 2, 3), generator=g).to(torch.int8)  # non-square cells
    return x, regions, torch.randperm(batch, generator=g), _levels(g, batch).to(dtype), True


def rmix_inputs(batch: int, dtype: torch.dtype, shape: tuple[int, int, int]) -> tuple:
    g = torch.Generator().manual_seed(2)
    x, grad = _images(g, batch, dtype, shape), _images(g, batch, dtype, shape)
    q = torch.tensor([0.0, 0.33, 0.5, 1.0])[torch.randint(4, (batch,), generator=g)]
    return x, grad, torch.randperm(batch, generator=g), _levels(g, batch).to(dtype), q, 2, True


def blend_sources_inputs(batch: int, dtype: torch.dtype, shape: tuple[int, int, int]) -> tuple:
    g = torch.Generator().manual_seed(3)
    x = _images(g, batch, dtype, shape)
    index = torch.stack([torch.randperm(batch, generator=g) for _ in range(3)])  # N = 3 sources
    _, H, W = shape
    logits = torch.randn(batch, 3, H // 2, W // 2, generator=g).to(dtype)  # scale 2: (B, 3, 4, 3) on SHAPE
    return x, index, logits, 2, "bilinear", "softmax", True


def sage_inputs(batch: int, dtype: torch.dtype, shape: tuple[int, int, int]) -> tuple:
    g = torch.Generator().manual_seed(3)
    x, grad = _images(g, batch, dtype, shape), _images(g, batch, dtype, shape)
    H, W = shape[1:]
    offsets = torch.tensor([[0, 0], [1, -2], [-(H - 1), W - 1], [H // 2, 1]])
    return x, grad, torch.randperm(batch, generator=g), _levels(g, batch).to(dtype), offsets, 1.0, 5, True


def _zero_perm(index: int):
    return lambda a: (*a[:index], torch.zeros_like(a[index]), *a[index + 1 :])


CONTRACTS = {
    "blend_sources": OpContract(
        name="blend_sources",
        inputs=blend_sources_inputs,
        public=lambda a, backend: (
            rmix_fast.blend_sources(
                a[0], index=a[1], logits=a[2], scale=a[3], mode=a[4], normalize=a[5], backend=backend
            ),
        ),
        break_content=(_zero_perm(1), "must be a permutation of 0..3"),
        bad_arguments=[
            (lambda a: (a[0], a[1].float(), *a[2:]), TypeError, "index must be an integer tensor"),
            (lambda a: (*a[:2], a[2].int(), *a[3:]), TypeError, "logits must be float16, bfloat16, float32 or float64"),
            (lambda a: (*a[:3], 4, *a[4:]), ValueError, r"logits must have shape \(B, N, h, w\)"),
            (lambda a: (*a[:4], "bicubic", a[5]), ValueError, "mode must be one of"),
        ],
    ),
    "blend_regions": OpContract(
        name="blend_regions",
        inputs=blend_regions_inputs,
        public=lambda a, backend: rmix_fast.blend_regions(a[0], regions=a[1], perm=a[2], lam=a[3], backend=backend),
        break_content=(_zero_perm(2), "perm must be a permutation"),
        scalars={3: 0.3},
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
        scalars={3: 0.3, 4: 0.5},
        bad_arguments=[
            (lambda a: (a[0], a[1].tolist(), *a[2:]), TypeError, "grad must be a torch.Tensor"),
            (lambda a: (*a[:2], a[2].float(), *a[3:]), TypeError, "perm must be an integer tensor"),
            (lambda a: (*a[:5], 4), ValueError, "grid=4 must divide both H=8 and W=6"),
        ],
    ),
    "sage": OpContract(
        name="sage",
        inputs=sage_inputs,
        public=lambda a, backend: rmix_fast.sage(
            a[0], a[1], perm=a[2], lam=a[3], offsets=a[4], sigma=a[5], kernel_size=a[6], backend=backend
        ),
        break_content=(_zero_perm(2), "perm must be a permutation"),
        scalars={3: 0.3},
        bad_arguments=[
            (lambda a: (a[0], a[1].tolist(), *a[2:]), TypeError, "grad must be a torch.Tensor"),
            (lambda a: (*a[:4], a[4].float(), *a[5:]), TypeError, "offsets must be an integer tensor"),
            (lambda a: (*a[:6], 4), ValueError, "kernel_size must be odd"),
        ],
    ),
}


def test_every_registered_op_has_a_contract_and_a_compiled_kernel():
    assert set(CONTRACTS) == set(OPS) == set(COMPILED_OPS)


# sage's "cpp" backend is a CPU kernel only (its GPU kernels are Triton's).
CPU_ONLY_CPP = {"sage"}
CASES = [
    (op, backend)
    for op in CONTRACTS
    for backend in BACKENDS
    if backend in OPS[op].forward and not (backend == "cpp" and op in CPU_ONLY_CPP and DEVICE.type != "cpu")
]


# The Triton interpreter runs kernels as serial Python: float64 gradcheck takes 5-20 s an op, opcheck and
# compile a few. The quick tier keeps the whole contract for the R-Mix ops and, for the others, every check
# but these on the interpreter; the slow tier (CI) runs all of them.
INTERPRETED_CONTRACT_IN_QUICK_TIER = {"blend_regions", "rmix"}
INTERPRETED_SLOW_CHECKS = {"gradcheck_float64", "opcheck", "compile_fullgraph"}


def _contract_params():
    for check in CHECKS:
        for op, backend in CASES:
            slow = (
                backend == "triton"
                and TRITON_INTERPRETED
                and check in INTERPRETED_SLOW_CHECKS
                and op not in INTERPRETED_CONTRACT_IN_QUICK_TIER
            )
            yield pytest.param(op, backend, check, id=f"{op}-{backend}-{check}", marks=[pytest.mark.slow] * slow)


@pytest.mark.parametrize(("op", "backend", "check"), list(_contract_params()))
def test_op_contract(op, backend, check):
    CHECKS[check](CONTRACTS[op], backend, DEVICE)


def _signature(schema: torch._C.FunctionSchema) -> dict:
    """Everything of a schema but its name: what the dispatcher, the fakes and autograd rely on."""

    def alias(a: torch._C.Argument) -> tuple | None:
        info = a.alias_info
        return None if info is None else (info.is_write, sorted(info.before_set), sorted(info.after_set))

    def argument(a: torch._C.Argument) -> tuple:
        return (a.name, a.real_type.str(), a.N, a.default_value, a.kwarg_only, alias(a))

    return {
        "arguments": [argument(a) for a in schema.arguments],
        "returns": [argument(r) for r in schema.returns],
        "overload": schema.overload_name,
    }


@pytest.mark.parametrize("op", sorted(OPS))
def test_cpp_schemas_are_the_op_specs(op):
    """csrc/ops.cpp states every schema a second time; it must say what the op's OpSpec says."""
    if "cpp" not in OPS[op].forward:
        pytest.skip("the 'cpp' backend is not built here")
    spec = OPS[op].spec
    for suffix, schema in (("", spec.schema), ("_backward", spec.backward_schema)):
        name = f"{op}_cpp{suffix}"
        cpp = getattr(getattr(torch.ops, NAMESPACE), name).default._schema
        want = torch._C.parse_schema(f"{NAMESPACE}::{name}{schema}")
        assert _signature(cpp) == _signature(want), f"{cpp} differs from the OpSpec's {want}"
