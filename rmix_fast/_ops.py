"""The ops of each backend, registered with the dispatcher through ``torch.library``.

Two ops, each a forward/backward pair per backend: R-Mix (``rmix_fast::rmix_<backend>`` and
``..._backward``) and the region blend behind Mixup and CutMix (``rmix_fast::blend_regions_<backend>``
and ``..._backward``). Python backends define theirs here with ``custom_op``; the compiled backend
("cpp") defines them in C++ (csrc/rmix_ops.cpp, TORCH_LIBRARY) with the same schemas. Per op, every
backend shares one fake (meta) implementation and one autograd registration, so autograd and
``torch.compile(fullgraph=True)`` treat every backend alike. The content checks run inside the forward
op (``check_values`` here, its C++ twin for "cpp"), so they run under compile too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rmix_fast import reference
from rmix_fast._backends import TRITON_PROBLEM
from rmix_fast._extension import EXTENSION_PROBLEM
from rmix_fast._validation import check_values

FORWARD_SCHEMA = (
    "(Tensor x, Tensor grad, Tensor perm, Tensor lam, Tensor q, int grid, bool validate) -> (Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = "(Tensor grad_out, Tensor mask, Tensor perm, Tensor lam) -> Tensor"
REGIONS_FORWARD_SCHEMA = "(Tensor x, Tensor regions, Tensor perm, Tensor lam, bool validate) -> (Tensor, Tensor)"
REGIONS_BACKWARD_SCHEMA = "(Tensor grad_out, Tensor regions, Tensor perm, Tensor lam) -> Tensor"


@dataclass(frozen=True)
class OpPair:
    forward: Callable[..., tuple[Tensor, Tensor, Tensor]]
    backward: Callable[..., Tensor]


def _fake_forward(x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, q: Tensor, grid: int, validate: bool):
    B = x.shape[0]
    return (
        torch.empty_like(x),
        x.new_empty((B,), dtype=torch.float32),
        x.new_empty((B, grid, grid), dtype=torch.bool),
    )


def _fake_backward(grad_out: Tensor, mask: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    return torch.empty_like(grad_out)


def _setup_context(ctx, inputs, output) -> None:
    _, _, perm, lam, _, _, _ = inputs
    _, lam_eff, mask = output
    ctx.mark_non_differentiable(lam_eff, mask)
    ctx.save_for_backward(mask, perm, lam)


def _attach(fwd, bwd) -> OpPair:
    """Fake kernels and autograd for a forward/backward op pair, defined in Python or in C++."""
    torch.library.register_fake(fwd, _fake_forward)
    torch.library.register_fake(bwd, _fake_backward)

    def backward(ctx, grad_mixed: Tensor, _grad_lam_eff: Tensor, _grad_mask: Tensor):
        mask, perm, lam = ctx.saved_tensors
        grad_x = bwd(grad_mixed, mask, perm, lam) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None, None, None

    torch.library.register_autograd(fwd, backward, setup_context=_setup_context)
    return OpPair(forward=fwd, backward=bwd)


def _fake_regions_forward(x: Tensor, regions: Tensor, perm: Tensor, lam: Tensor, validate: bool):
    return torch.empty_like(x), x.new_empty((x.shape[0],), dtype=torch.float32)


def _regions_setup_context(ctx, inputs, output) -> None:
    _, regions, perm, lam, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(regions, perm, lam)


def _attach_regions(fwd, bwd) -> OpPair:
    """Fake kernels and autograd for a region-blend op pair, defined in Python or in C++."""
    torch.library.register_fake(fwd, _fake_regions_forward)
    torch.library.register_fake(bwd, _fake_backward)

    def backward(ctx, grad_mixed: Tensor, _grad_lam_eff: Tensor):
        regions, perm, lam = ctx.saved_tensors
        grad_x = bwd(grad_mixed, regions, perm, lam) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None

    torch.library.register_autograd(fwd, backward, setup_context=_regions_setup_context)
    return OpPair(forward=fwd, backward=bwd)


def _register(backend: str, forward_impl: Callable, backward_impl: Callable) -> OpPair:
    """Defines the R-Mix op pair of a Python backend; the content checks run inside the forward op."""
    name = f"rmix_fast::rmix_{backend}"

    def forward(x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, q: Tensor, grid: int, validate: bool):
        if validate:
            check_values(perm, lam, q)
        return forward_impl(x, grad, perm, lam, q, grid)

    fwd = torch.library.custom_op(name, forward, mutates_args=(), schema=FORWARD_SCHEMA)
    bwd = torch.library.custom_op(f"{name}_backward", backward_impl, mutates_args=(), schema=BACKWARD_SCHEMA)
    return _attach(fwd, bwd)


def _register_regions(backend: str, forward_impl: Callable, backward_impl: Callable) -> OpPair:
    """Defines the region-blend op pair of a Python backend."""
    name = f"rmix_fast::blend_regions_{backend}"

    def forward(x: Tensor, regions: Tensor, perm: Tensor, lam: Tensor, validate: bool):
        if validate:
            check_values(perm, lam, regions=regions)
        return forward_impl(x, regions, perm, lam)

    fwd = torch.library.custom_op(name, forward, mutates_args=(), schema=REGIONS_FORWARD_SCHEMA)
    bwd = torch.library.custom_op(f"{name}_backward", backward_impl, mutates_args=(), schema=REGIONS_BACKWARD_SCHEMA)
    return _attach_regions(fwd, bwd)


def _register_all() -> tuple[dict[str, OpPair], dict[str, OpPair]]:
    """Registers at import: registering lazily would happen inside torch.compile's tracing."""
    ops = {"reference": _register("reference", reference.rmix_forward, reference.rmix_backward)}
    region_ops = {
        "reference": _register_regions("reference", reference.blend_regions, reference.blend_regions_backward)
    }
    if TRITON_PROBLEM is None:
        from rmix_fast.triton_kernels import rmix as triton_rmix

        ops["triton"] = _register("triton", triton_rmix.rmix_forward, triton_rmix.rmix_backward)
        region_ops["triton"] = _register_regions(
            "triton", triton_rmix.blend_regions_forward, triton_rmix.blend_regions_backward
        )
    if EXTENSION_PROBLEM is None:  # the C++ library defined these ops (csrc/rmix_ops.cpp) with the same schemas
        lib = torch.ops.rmix_fast
        ops["cpp"] = _attach(lib.rmix_cpp.default, lib.rmix_cpp_backward.default)
        region_ops["cpp"] = _attach_regions(lib.blend_regions_cpp.default, lib.blend_regions_cpp_backward.default)
    return ops, region_ops


OPS, REGION_OPS = _register_all()
