"""Registers every op on every backend from one description (``OpSpec``), through ``torch.library``.

Each op is a forward/backward pair per backend: ``rmix_fast::<op>_<backend>`` and
``rmix_fast::<op>_<backend>_backward``. Putting the backend in the op name lets several backends live on
one device side by side (the tests and benchmarks compare them). The implementations are found by name,
one base name in every layer:

* ``reference``: ``rmix_fast.reference.<op>.<op>_forward`` / ``<op>_backward`` (``custom_op``);
* ``triton``: ``rmix_fast.ops._triton.<op>.<op>_forward`` / ``<op>_backward`` (``custom_op``), where Triton
  can be imported;
* ``cpp``: ``torch.ops.rmix_fast.<op>_cpp`` / ``<op>_cpp_backward``, defined in C++ (csrc/ops.cpp) with the
  same schemas, where the extension is built.

Every backend of an op then shares the spec's fake (meta) implementation and one autograd registration,
so autograd, ``torch.library.opcheck`` and ``torch.compile(fullgraph=True)`` treat all backends alike. The
content checks run inside the forward op (the spec's ``check_values`` here, its C++ twin for "cpp"), so
they run under compile too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rmix_fast.ops._backends import TRITON_PROBLEM
from rmix_fast.ops._extension import EXTENSION_PROBLEM

__all__ = ["OPS", "OpSpec", "RegisteredOp", "register_op"]

NAMESPACE = "rmix_fast"


@dataclass(frozen=True)
class OpSpec:
    """One op, as data.

    Attributes:
        name: the op's base name, the same in every layer (files, functions, C++ ops).
        schema: the forward's schema without its name; its last argument is ``bool validate``.
        backward_schema: the backward op's schema: the gradients of ``grad_outputs``, then the values
            ``save`` returns; it returns the gradients of ``grad_inputs``, in order.
        fake: the forward's fake (meta) implementation, with the forward's arguments.
        save: ``(inputs, outputs) -> values`` the backward op takes after the output gradients: tensors and
            non-tensor arguments (ints, strings) in any order.
        check_values: content checks of the forward's inputs (all but ``validate``), one host sync.
        grad_outputs: outputs that carry gradients; every other output is marked non-differentiable.
        grad_inputs: inputs the backward op returns gradients for.
        backward_fake: the backward's fake; default: one ``empty_like`` of the first output gradient.
    """

    name: str
    schema: str
    backward_schema: str
    fake: Callable[..., Any]
    save: Callable[[tuple[Any, ...], tuple[Tensor, ...]], tuple[Any, ...]]
    check_values: Callable[..., None]
    grad_outputs: tuple[int, ...] = (0,)
    grad_inputs: tuple[int, ...] = (0,)
    backward_fake: Callable[..., Any] | None = None


@dataclass(frozen=True)
class RegisteredOp:
    """An op's forward and backward on every backend that runs in this process."""

    spec: OpSpec
    forward: dict[str, Callable[..., Any]]
    backward: dict[str, Callable[..., Any]]


OPS: dict[str, RegisteredOp] = {}


def _first_like(grad: Tensor, *_: Any) -> Tensor:
    return torch.empty_like(grad)


def _attach(spec: OpSpec, fwd: Any, bwd: Any) -> None:
    """The spec's fakes and autograd on one backend's op pair, defined in Python or in C++."""
    torch.library.register_fake(fwd, spec.fake)
    torch.library.register_fake(bwd, spec.backward_fake or _first_like)

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        outputs = output if isinstance(output, tuple) else (output,)
        ctx.mark_non_differentiable(*(t for i, t in enumerate(outputs) if i not in spec.grad_outputs))
        saved = spec.save(inputs, outputs)
        # save_for_backward takes tensors only (it guards them against in-place changes and reference
        # cycles); the other saved arguments live on ctx, with where each sat, to be put back in order.
        ctx.saved_is_tensor = tuple(isinstance(v, Tensor) for v in saved)
        ctx.saved_values = tuple(v for v in saved if not isinstance(v, Tensor))
        ctx.save_for_backward(*(v for v in saved if isinstance(v, Tensor)))

    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        needed = [ctx.needs_input_grad[i] for i in spec.grad_inputs]
        result: list[Tensor | None] = [None] * len(ctx.needs_input_grad)
        if any(needed):
            tensors, values = iter(ctx.saved_tensors), iter(ctx.saved_values)
            saved = [next(tensors) if is_tensor else next(values) for is_tensor in ctx.saved_is_tensor]
            computed = bwd(*(grads[i] for i in spec.grad_outputs), *saved)
            computed = computed if isinstance(computed, tuple | list) else (computed,)
            for index, wanted, grad in zip(spec.grad_inputs, needed, computed, strict=True):
                result[index] = grad if wanted else None
        return tuple(result)

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _define(spec: OpSpec, backend: str, forward_impl: Callable[..., Any], backward_impl: Callable[..., Any]):
    """The op pair of a Python backend; the content checks run inside the forward op."""
    name = f"{NAMESPACE}::{spec.name}_{backend}"

    def forward(*args: Any) -> Any:
        *inputs, validate = args
        if validate:
            spec.check_values(*inputs)
        return forward_impl(*inputs)

    fwd = torch.library.custom_op(name, forward, mutates_args=(), schema=spec.schema)
    bwd = torch.library.custom_op(f"{name}_backward", backward_impl, mutates_args=(), schema=spec.backward_schema)
    return fwd, bwd


def _python_backends(spec: OpSpec) -> dict[str, tuple[Callable[..., Any], Callable[..., Any]]]:
    modules = {"reference": f"rmix_fast.reference.{spec.name}"}
    if TRITON_PROBLEM is None:
        modules["triton"] = f"rmix_fast.ops._triton.{spec.name}"
    found = {}
    for backend, module_name in modules.items():
        try:
            module = importlib.import_module(module_name)
            found[backend] = (getattr(module, f"{spec.name}_forward"), getattr(module, f"{spec.name}_backward"))
        except (ImportError, AttributeError) as exc:
            raise ImportError(
                f"op {spec.name!r} has no {backend} implementation: {module_name} must define "
                f"{spec.name}_forward and {spec.name}_backward (CONTRIBUTING.md, 'Add an op'): {exc}"
            ) from exc
    return found


def _check_spec(spec: OpSpec) -> None:
    """The conventions the registry relies on: ``x`` first, ``validate`` last."""
    args = torch._C.parse_schema(f"{NAMESPACE}::{spec.name}{spec.schema}").arguments
    if args[0].name != "x" or args[-1].name != "validate" or str(args[-1].type) != "bool":
        raise ValueError(f"op {spec.name!r}: the schema must start with Tensor x and end with bool validate")


def register_op(spec: OpSpec) -> RegisteredOp:
    """Defines ``spec`` on every backend that runs here and attaches its fakes and autograd. Called once per
    op, at import: registering lazily would happen inside torch.compile's tracing."""
    if spec.name in OPS:
        raise ValueError(f"op {spec.name!r} is registered already")
    _check_spec(spec)
    forward, backward = {}, {}
    for backend, (forward_impl, backward_impl) in _python_backends(spec).items():
        forward[backend], backward[backend] = _define(spec, backend, forward_impl, backward_impl)
    if EXTENSION_PROBLEM is None:  # the C++ library defined these ops with the same schemas
        lib = getattr(torch.ops, NAMESPACE)
        forward["cpp"] = getattr(lib, f"{spec.name}_cpp").default
        backward["cpp"] = getattr(lib, f"{spec.name}_cpp_backward").default
    for backend in forward:
        _attach(spec, forward[backend], backward[backend])
    OPS[spec.name] = RegisteredOp(spec, forward, backward)
    return OPS[spec.name]
