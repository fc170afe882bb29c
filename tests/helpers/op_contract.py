"""The contract every registered op keeps on every backend, written once (``tests/ops/test_op_contracts.py``
runs it over every ``OpSpec``): ``torch.library.opcheck`` of the forward and backward ops, ``torch.compile
(fullgraph=True)`` forward and backward equal to eager (content checks still raising inside the compiled
graph), float64 ``gradcheck``, an empty batch, and clear errors for arguments of the wrong type.

An op takes part by describing how to call it (``OpContract``): the forward op's arguments for a batch
size, dtype and image shape, and the public function on those arguments. By convention ``x`` is the
forward's first argument and ``validate`` its last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from rmix_fast.ops._registry import OPS

Inputs = tuple[Any, ...]


@dataclass(frozen=True)
class OpContract:
    """How the contract calls one op.

    Attributes:
        name: the op's registered name.
        inputs: ``(batch, dtype, (C, H, W)) -> the forward op's arguments``, validate=True last.
        public: ``(arguments without validate, backend) -> outputs`` through the public function.
        break_content: arguments with a content error that only ``validate`` catches, and the message.
        bad_arguments: per op, ``(transform of the arguments, error type, message)`` the public function raises.
        scalars: arguments the public function also takes as Python numbers (index: a value to pass),
            which must trace too (the op then builds their tensors inside the compiled graph).
    """

    name: str
    inputs: Callable[[int, torch.dtype, tuple[int, int, int]], Inputs]
    public: Callable[[Inputs, str], tuple[Tensor, ...]]
    break_content: tuple[Callable[[Inputs], Inputs], str]
    bad_arguments: list[tuple[Callable[[Inputs], Inputs], type[Exception], str]] = field(default_factory=list)
    scalars: dict[int, float] = field(default_factory=dict)


# Odd, non-square images: (C, H, W) of the op checks, and a tiny one for gradcheck (it runs the op twice
# per input element).
SHAPE = (3, 8, 6)
GRADCHECK_SHAPE = (1, 2, 6)


def _with_x(args: Inputs, x: Any) -> Inputs:
    return (x, *args[1:])


# Arguments every op rejects the same way: x is the forward's first argument.
COMMON_BAD_ARGUMENTS: list[tuple[Callable[[Inputs], Inputs], type[Exception], str]] = [
    (lambda a: _with_x(a, a[0].tolist()), TypeError, "x must be a torch.Tensor"),
    (lambda a: _with_x(a, a[0].to(torch.int32)), TypeError, "x must be float16, bfloat16, float32 or float64"),
    (lambda a: _with_x(a, a[0][0]), ValueError, r"x must be 4-D \(B, C, H, W\)"),
]


def _float_outputs(outputs: tuple[Tensor, ...]) -> list[Tensor]:
    return [t for t in outputs if t.is_floating_point()]


def check_opcheck(contract: OpContract, backend: str, device: torch.device) -> None:
    op = OPS[contract.name]
    args = tree_to(contract.inputs(4, torch.float32, SHAPE), device)
    args = (args[0].detach().requires_grad_(True), *args[1:])
    torch.library.opcheck(op.forward[backend], args)
    outputs = op.forward[backend](*args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    # detached, as autograd hands them to a backward without create_graph: the backward ops have no backward
    saved = tuple(v.detach() if isinstance(v, Tensor) else v for v in op.spec.save(args, outputs))
    grads = tuple(torch.randn_like(outputs[i]) for i in op.spec.grad_outputs)
    torch.library.opcheck(op.backward[backend], (*grads, *saved))


def check_compile_fullgraph(contract: OpContract, backend: str, device: torch.device) -> None:
    torch._dynamo.reset()
    args = tree_to(contract.inputs(4, torch.float32, SHAPE), device)[:-1]
    x = args[0].contiguous(memory_format=torch.channels_last)
    with_scalars = tuple(contract.scalars.get(i, a) for i, a in enumerate(args))

    def step(t: Tensor, rest: Inputs) -> tuple[Tensor, list[Tensor]]:
        outputs = contract.public((t, *rest), backend)
        return (outputs[0] * outputs[0]).sum(), _float_outputs(outputs[1:])

    for variant in (args, with_scalars):
        compiled = torch.compile(step, fullgraph=True)
        x_eager, x_compiled = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
        loss_eager, rest_eager = step(x_eager, variant[1:])
        loss_compiled, rest_compiled = compiled(x_compiled, variant[1:])
        loss_eager.backward()
        loss_compiled.backward()
        torch.testing.assert_close(loss_compiled, loss_eager)
        torch.testing.assert_close(rest_compiled, rest_eager)
        torch.testing.assert_close(x_compiled.grad, x_eager.grad)
    # the content checks run inside the op, so the compiled code still rejects bad content
    broken, match = contract.break_content
    with pytest.raises(ValueError, match=match):
        compiled(x_compiled, broken(args)[1:])


def check_gradcheck(contract: OpContract, backend: str, device: torch.device) -> None:
    # B = 2, C = 1 and a few pixels: gradcheck runs the op twice per input element
    args = tree_to(contract.inputs(2, torch.float64, GRADCHECK_SHAPE), device)[:-1]
    x = args[0].detach().clone().requires_grad_(True)

    def fn(t: Tensor) -> Tensor:
        return contract.public((t, *args[1:]), backend)[0]

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8)


def check_empty_batch(contract: OpContract, backend: str, device: torch.device) -> None:
    args = tree_to(contract.inputs(0, torch.float32, SHAPE), device)
    public = contract.public(args[:-1], backend)
    direct = OPS[contract.name].forward[backend](*args)  # the backend's own op, past the public guard
    direct = direct if isinstance(direct, tuple) else (direct,)
    for outputs in (public, direct):
        assert outputs[0].shape == args[0].shape and outputs[0].dtype == args[0].dtype
        assert all(t.shape[0] == 0 for t in outputs[1:])


def check_bad_arguments(contract: OpContract, backend: str, device: torch.device) -> None:
    args = tree_to(contract.inputs(4, torch.float32, SHAPE), device)[:-1]
    for transform, error, match in [*COMMON_BAD_ARGUMENTS, *contract.bad_arguments]:
        with pytest.raises(error, match=match):
            contract.public(transform(args), backend)


def tree_to(args: Inputs, device: torch.device) -> Inputs:
    return tuple(a.to(device) if isinstance(a, Tensor) else a for a in args)


CHECKS = {
    "opcheck": check_opcheck,
    "compile_fullgraph": check_compile_fullgraph,
    "gradcheck_float64": check_gradcheck,
    "empty_batch": check_empty_batch,
    "bad_arguments": check_bad_arguments,
}
