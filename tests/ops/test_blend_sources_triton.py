"""The Triton backend of ``blend_sources`` against the reference, forward and backward, called directly
(``rmix_fast.ops._triton.blend_sources``; the public op and its contract are tested where it is registered).

Without a GPU the kernels run in the Triton interpreter (``conftest.py``), so shapes stay small. The
upsampling and softmax agree with PyTorch's to rounding, not bit for bit (PyTorch's CPU bilinear kernel
itself rounds differently by channel count, output size and thread count), so the comparison allows
a few float32 / float64 ulps of the result's scale, and one ulp of a float16 / bfloat16 result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from rmix_fast.reference import blend_sources as reference
from tests.helpers.cases import layout

triton_kernels = pytest.importorskip("rmix_fast.ops._triton.blend_sources")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (rtol, atol relative to the largest magnitude) of a result in each dtype: a few ulps of float32 and
# float64 for values computed the same way up to rounding; one ulp of the half types (the reference and
# the kernel round the same float32 value, which may straddle a rounding boundary; the interpreter also
# truncates float32 to bfloat16 where a GPU rounds).
TOLERANCE = {
    torch.float32: (4e-6, 1e-6),
    torch.float64: (1e-12, 1e-13),
    torch.float16: (2.0**-10, 2.0**-11),
    torch.bfloat16: (2.0**-7, 2.0**-8),
}

# The Triton kernels one by one, under the interpreter: the slow tier (test_blend_sources.py covers this
# backend in the quick one).
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    B: int
    C: int
    N: int
    h: int
    w: int
    scale: int
    mode: str
    normalize: str
    dtype: torch.dtype
    logits_dtype: torch.dtype
    x_layout: str
    index_dtype: torch.dtype = torch.int64
    grad_layout: str | None = None  # None: grad_out in x's layout
    logits_layout: str = "contiguous"

    def __str__(self) -> str:
        short = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}
        return (
            f"B{self.B}C{self.C}N{self.N}-{self.h}x{self.w}s{self.scale}-{self.mode}-{self.normalize}-"
            f"{short[self.dtype]}-{short[self.logits_dtype]}-{self.x_layout}-{str(self.index_dtype)[6:]}"
            f"{'-g_' + self.grad_layout if self.grad_layout else ''}{'-l_' + self.logits_layout}"
        )


F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
I32 = torch.int32
CASES = [
    Case(4, 3, 2, 3, 5, 2, "bilinear", "softmax", F32, F32, "contiguous"),
    Case(4, 3, 3, 3, 5, 4, "bilinear", "softmax", F32, F32, "channels_last", I32),
    Case(3, 2, 1, 2, 3, 1, "bilinear", "softmax", F32, F32, "strided"),
    Case(2, 1, 2, 1, 1, 16, "bilinear", "softmax", F32, F32, "contiguous"),
    Case(2, 3, 3, 2, 2, 16, "nearest", "none", F32, F64, "channels_last", I32),
    Case(3, 3, 2, 3, 5, 3, "bilinear", "softmax", F32, F32, "contiguous", logits_layout="channels_last"),
    Case(3, 1, 3, 3, 4, 3, "nearest", "softmax", F32, F32, "strided", I32),
    Case(4, 3, 3, 3, 5, 4, "nearest", "softmax", F64, F32, "strided"),
    Case(4, 3, 3, 3, 5, 4, "bilinear", "softmax", F64, F64, "channels_last", I32, logits_layout="strided"),
    Case(3, 2, 2, 3, 5, 2, "bilinear", "none", F64, F64, "strided"),
    Case(4, 3, 2, 3, 5, 2, "bilinear", "none", F16, BF16, "contiguous"),
    Case(4, 3, 3, 2, 3, 4, "bilinear", "softmax", BF16, F32, "channels_last"),
    Case(3, 3, 2, 3, 5, 2, "nearest", "softmax", F16, F16, "strided", I32),
    Case(4, 2, 2, 3, 5, 1, "nearest", "none", BF16, F64, "contiguous"),
    Case(4, 3, 2, 3, 5, 2, "bilinear", "softmax", F32, F32, "channels_last", grad_layout="contiguous"),
    Case(3, 3, 3, 2, 3, 4, "nearest", "softmax", F32, BF16, "contiguous", I32, grad_layout="strided"),
]


def make_inputs(case: Case, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, index, logits, grad_out) of a case: each row of index a random permutation."""
    gen = torch.Generator().manual_seed(seed)
    H, W = case.h * case.scale, case.w * case.scale
    x = torch.randn(case.B, case.C, H, W, generator=gen).to(case.dtype)
    index = torch.stack([torch.randperm(case.B, generator=gen) for _ in range(case.N)]).to(case.index_dtype)
    logits = (2 * torch.randn(case.B, case.N, case.h, case.w, generator=gen)).to(case.logits_dtype)
    grad_out = torch.randn(case.B, case.C, H, W, generator=gen).to(case.dtype)
    x = layout(x, case.x_layout).to(DEVICE)
    grad_out = layout(grad_out, case.grad_layout or case.x_layout).to(DEVICE)
    return x, index.to(DEVICE), layout(logits, case.logits_layout).to(DEVICE), grad_out


def assert_close(got: Tensor, want: Tensor, what: str, weights: torch.dtype) -> float:
    """``got`` equals ``want`` within the tolerance of its dtype, or of the dtype the weights were computed
    in (the logits' accumulate dtype) where that is looser; returns the largest difference."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    weights = torch.float64 if weights == torch.float64 else torch.float32
    rtol, atol = (max(a, b) for a, b in zip(TOLERANCE[want.dtype], TOLERANCE[weights], strict=True))
    scale = float(want.double().abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * max(scale, 1.0), msg=lambda m: f"{what}: {m}")
    return float((got.double() - want.double()).abs().max()) if got.numel() else 0.0


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(case: Case):
    x, index, logits, grad_out = make_inputs(case)
    args = (index, logits, case.scale, case.mode, case.normalize)
    mixed = triton_kernels.blend_sources_forward(x, *args)
    want = reference.blend_sources_forward(x.cpu(), index.cpu(), logits.cpu(), *args[2:])
    assert_close(mixed.cpu(), want, "mixed", case.logits_dtype)
    cl = torch.channels_last
    assert mixed.is_contiguous(memory_format=cl) == want.is_contiguous(memory_format=cl)
    assert mixed.is_contiguous() == want.is_contiguous()

    grad_x, grad_logits = triton_kernels.blend_sources_backward(grad_out, x, *args)
    want_x, want_logits = reference.blend_sources_backward(grad_out.cpu(), x.cpu(), index.cpu(), logits.cpu(),
                                                           *args[2:])  # fmt: skip
    assert_close(grad_x.cpu(), want_x, "grad_x", case.logits_dtype)
    assert grad_x.is_contiguous(memory_format=cl) == want_x.is_contiguous(memory_format=cl)
    assert_close(grad_logits.cpu(), want_logits, "grad_logits", case.logits_dtype)


def test_deterministic():
    """The same inputs give the same bits (no atomics, a fixed summation order)."""
    case = CASES[1]
    x, index, logits, grad_out = make_inputs(case, seed=3)
    args = (index, logits, case.scale, case.mode, case.normalize)
    first = triton_kernels.blend_sources_backward(grad_out, x, *args)
    again = triton_kernels.blend_sources_backward(grad_out, x, *args)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_one_source_copies_and_identity_permutation():
    """N = 1 with softmax: W = 1, so mixed is x[index[0]] exactly and grad_x the gathered grad_out."""
    case = Case(4, 3, 1, 3, 5, 2, "bilinear", "softmax", F32, F32, "contiguous")
    x, index, logits, grad_out = make_inputs(case, seed=5)
    mixed = triton_kernels.blend_sources_forward(x, index, logits, 2, "bilinear", "softmax")
    assert torch.equal(mixed, x[index[0]])
    grad_x, grad_logits = triton_kernels.blend_sources_backward(grad_out, x, index, logits, 2, "bilinear", "softmax")
    assert torch.equal(grad_x[index[0]], grad_out)
    assert torch.equal(grad_logits, torch.zeros_like(logits))  # the weights do not depend on the logits


def test_empty_batch():
    x = torch.empty(0, 3, 4, 4, device=DEVICE)
    index = torch.empty(2, 0, dtype=torch.int64, device=DEVICE)
    logits = torch.empty(0, 2, 2, 2, device=DEVICE)
    assert triton_kernels.blend_sources_forward(x, index, logits, 2, "bilinear", "softmax").shape == x.shape
    grad_x, grad_logits = triton_kernels.blend_sources_backward(x, x, index, logits, 2, "bilinear", "softmax")
    assert grad_x.shape == x.shape and grad_logits.shape == logits.shape


@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last", "strided"])
def test_64_bit_offsets_compute_the_same(x_layout):
    """The 64-bit offset path (taken when a sample spans 2**31 elements), forced on small tensors, gives
    the 32-bit path's bits."""
    case = Case(3, 3, 2, 2, 3, 2, "bilinear", "softmax", F32, F32, x_layout)
    x, index, logits, grad_out = make_inputs(case, seed=7)
    args = (logits, case.scale, case.mode, case.normalize)
    mixed = triton_kernels.blend_sources_forward(x, index, *args)
    wide_mixed = torch.empty_like(mixed)
    plan = triton_kernels.plan_forward(x, wide_mixed, index, *args)
    dataclasses.replace(plan, constexprs={**plan.constexprs, "WIDE": True})()
    assert torch.equal(wide_mixed, mixed)
    grad_x, _ = triton_kernels.blend_sources_backward(grad_out, x, index, *args)
    inverse = torch.argsort(index, dim=1).to(torch.int32)
    wide_grad_x = torch.empty_like(grad_x)
    scratch = torch.empty((case.B, case.N, x.shape[2] * x.shape[3]), device=DEVICE)
    plan = triton_kernels.plan_grad_x(grad_out, x, wide_grad_x, scratch, inverse, *args)
    dataclasses.replace(plan, constexprs={**plan.constexprs, "WIDE": True})()
    assert torch.equal(wide_grad_x, grad_x)
