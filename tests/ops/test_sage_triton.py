"""SAGE's Triton kernels (``rmix_fast.ops._triton.sage``) against the reference, called directly: their own
details (launch counts, dtype pairs, layouts) beyond ``test_sage.py``'s comparison of every backend. Small
shapes: under TRITON_INTERPRET=1 the kernels run as serial Python.

The shift must be the reference's except where the reference's two best scores are within rounding of each
other (summation order differs); the outputs are then compared with the reference recomputed at the kernel's
own shift, so a near-tie never loosens the pixel comparison.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

pytest.importorskip("triton")

from rmix_fast.ops._backends import TRITON_PROBLEM
from rmix_fast.reference import sage as ref
from tests.helpers.cases import DEVICE, layout

if TRITON_PROBLEM is not None:
    pytest.skip(TRITON_PROBLEM, allow_module_level=True)
from rmix_fast.ops._triton import _launch
from rmix_fast.ops._triton import sage as kernels

if DEVICE.type == "cpu" and not _launch.INTERPRETED:
    pytest.skip("Triton runs on CPU tensors only under TRITON_INTERPRET=1", allow_module_level=True)

TIE = 1e-5  # relative gap of two scores under which either may win
# (weight / lam_eff, mixed) tolerances by dtype: rounding of the partition sums, and the interpreter's
# truncating float32 -> bfloat16 conversion (one ulp) for bfloat16 outputs.
TOL = {
    torch.float32: 1e-5,
    torch.float64: 1e-12,
    torch.float16: 2**-10,
    torch.bfloat16: 2**-7,
}

# SAGE's Triton kernels one by one, under the interpreter: the slow tier (test_sage.py covers this backend
# in the quick one).
pytestmark = pytest.mark.slow


def _offsets(K: int, H: int, W: int, g: torch.Generator, dtype: torch.dtype = torch.int64) -> Tensor:
    """K shifts in range, always including both extremes of each axis."""
    dy = torch.randint(-(H - 1), H, (K,), generator=g)
    dx = torch.randint(-(W - 1), W, (K,), generator=g)
    if K >= 4:
        dy[:4] = torch.tensor([H - 1, -(H - 1), 0, 1 - H])
        dx[:4] = torch.tensor([1 - W, W - 1, 0, W - 1])
    return torch.stack([dy, dx], 1).to(dtype)


def _inputs(
    B: int, C: int, H: int, W: int, K: int, *, x_dtype: torch.dtype = torch.float32,
    grad_dtype: torch.dtype | None = None, x_layout: str = "contiguous", grad_layout: str = "contiguous", seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(x, grad, perm, lam, offsets) on DEVICE; lam holds the endpoints 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g).to(x_dtype)
    # saliency with structure (a few strong pixels) so the search has a clear winner most of the time
    grad = (torch.randn(B, C, H, W, generator=g) * torch.rand(B, 1, H, W, generator=g) ** 4).to(grad_dtype or x_dtype)
    perm = torch.randperm(B, generator=g)
    lam = torch.rand(B, generator=g)
    lam[: min(B, 2)] = torch.tensor([0.0, 1.0])[: min(B, 2)]
    lam = lam.to(ref.accumulate_dtype(grad.dtype))
    return (layout(x, x_layout).to(DEVICE), layout(grad, grad_layout).to(DEVICE), perm.to(DEVICE), lam.to(DEVICE),
            _offsets(K, H, W, g).to(DEVICE))  # fmt: skip


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _formats(t: Tensor) -> tuple[bool, bool]:
    return t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)


def check_forward(
    x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, offsets: Tensor, sigma: float = 1.0, kernel_size: int = 5
) -> dict[str, float]:
    """Asserts the kernels match the reference; returns the largest differences."""
    B = x.shape[0]
    mixed, lam_eff, shift, weight = kernels.sage_forward(x, grad, perm, lam, offsets, sigma, kernel_size)
    want = ref.sage_forward(x, grad, perm, lam, offsets, sigma, kernel_size)
    acc = ref.accumulate_dtype(grad.dtype)

    assert mixed.shape == x.shape and mixed.dtype == x.dtype
    assert _formats(mixed) == _formats(want[0]), "mixed is not in the reference's memory format"
    assert lam_eff.shape == (B,) and lam_eff.dtype == torch.float32
    assert shift.shape == (B, 2) and shift.dtype == torch.int64
    assert weight.shape == want[3].shape and weight.dtype == acc

    differ = (shift != want[2]).any(dim=1)
    if differ.any():  # only near-ties may differ, judged by the reference's own scores
        a, c = ref._own_and_partner(grad, perm, lam, sigma, kernel_size)
        scores = ref.sage_scores(a, c, offsets.to(torch.int64))
        offs = offsets.to(torch.int64)
        for b in differ.nonzero().flatten().tolist():
            k = int(((offs == shift[b]).all(dim=1)).nonzero()[0])
            best = float(scores[b].max())
            assert float(scores[b, k]) >= best - TIE * abs(best), f"sample {b}: shift {shift[b].tolist()} is no tie"
    # the reference at the kernels' shift: one single-candidate call per sample whose shift differs
    want_mixed, want_lam_eff, want_weight = want[0].clone(), want[1].clone(), want[3].clone()
    for b in differ.nonzero().flatten().tolist():
        one = ref.sage_forward(x, grad, perm, lam, shift[b : b + 1], sigma, kernel_size)
        want_mixed[b], want_lam_eff[b], want_weight[b] = one[0][b], one[1][b], one[3][b]

    tol_w = TOL[acc]
    tol_x = max(TOL[x.dtype], tol_w)  # a float32 weight's rounding shows in a float64 blend
    torch.testing.assert_close(weight, want_weight, rtol=tol_w, atol=tol_w)
    torch.testing.assert_close(mixed, want_mixed, rtol=tol_x, atol=tol_x)
    lam_tol = max(tol_w, 2**-23)  # a float32 output: one ulp when the float64 mean rounds the other way
    torch.testing.assert_close(lam_eff, want_lam_eff, rtol=lam_tol, atol=lam_tol)
    assert ((weight >= 0) & (weight <= 1)).all()
    return {
        "weight": _max_diff(weight, want_weight),
        "mixed": _max_diff(mixed, want_mixed),
        "lam_eff": _max_diff(lam_eff, want_lam_eff),
        "ties": int(differ.sum()),
    }


def check_backward(
    x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, offsets: Tensor, grad_out_layout: str = "contiguous",
    seed: int = 0,
) -> float:  # fmt: skip
    """The backward at the reference's weight and shift against the reference's backward; the largest difference."""
    _, _, shift, weight = ref.sage_forward(x, grad, perm, lam, offsets, 1.0, 5)
    g = torch.Generator().manual_seed(seed)
    go = layout(torch.randn(x.shape, generator=g).to(x.dtype).to(DEVICE), grad_out_layout)
    got = kernels.sage_backward(go, weight, perm, shift)
    want = ref.sage_backward(go, weight, perm, shift)
    assert got.dtype == want.dtype and _formats(got) == _formats(want)
    torch.testing.assert_close(got, want, rtol=TOL[x.dtype], atol=TOL[x.dtype])
    return _max_diff(got, want)


@pytest.mark.parametrize(
    ("x_dtype", "grad_dtype", "x_layout", "grad_layout"),
    [
        (torch.float32, torch.float32, "contiguous", "channels_last"),
        (torch.float64, torch.float64, "channels_last", "strided"),
        (torch.bfloat16, torch.float32, "strided", "contiguous"),
        (torch.float16, torch.bfloat16, "transposed", "channels_last"),
        (torch.float32, torch.float64, "channels_last", "contiguous"),
        (torch.float64, torch.float16, "contiguous", "transposed"),
    ],
    ids=str,
)
def test_dtypes_and_layouts(x_dtype, grad_dtype, x_layout, grad_layout):
    args = _inputs(5, 3, 9, 13, 16, x_dtype=x_dtype, grad_dtype=grad_dtype, x_layout=x_layout,
                   grad_layout=grad_layout, seed=1)  # fmt: skip
    check_forward(*args)
    check_backward(*args, grad_out_layout=x_layout)


@pytest.mark.parametrize(
    ("B", "C", "H", "W", "K", "kernel_size"),
    [
        (6, 3, 20, 20, 40, 5),  # the paper's candidate count on a CIFAR-like square
        (3, 3, 17, 6, 24, 5),  # odd, tall
        (2, 1, 3, 2, 6, 5),  # smaller than the kernel on both axes: reflection repeats
        (3, 2, 1, 7, 5, 5),  # one row: every row reflects to 0
        (2, 3, 4, 11, 9, 7),  # a larger kernel than the height
        (1, 8, 5, 5, 8, 3),  # B = 1: its own partner; eight channels
        (2, 3, 3, 70, 6, 5),  # wider than one search and one blur tile
        (2, 3, 1, 1, 1, 5),  # one pixel, the one shift (0, 0)
    ],
)
def test_shapes_and_kernels(B, C, H, W, K, kernel_size):
    x, grad, perm, lam, offsets = _inputs(B, C, H, W, K, seed=H * W + K)
    check_forward(x, grad, perm, lam, offsets, sigma=0.8 + 0.1 * kernel_size, kernel_size=kernel_size)


def test_zero_and_non_finite_gradients_fall_back():
    x, grad, perm, lam, offsets = _inputs(5, 3, 8, 11, 12, seed=3)
    grad[0] = 0.0
    grad[1, 1, 2, 3] = float("nan")
    grad[2, 0, 7, 10] = float("inf")
    check_forward(x, grad, perm, lam, offsets)
    _, _, _, weight = kernels.sage_forward(x, grad, perm, lam, offsets, 1.0, 5)
    assert torch.isfinite(weight).all()


def test_parameter_forms():
    # int32 perm and offsets, offsets a transposed view, lam a stride-0 expansion of a 0-d tensor
    x, grad, perm, _, offsets = _inputs(4, 3, 7, 9, 10, seed=4)
    lam = torch.tensor(0.3, device=DEVICE).expand(4)
    offsets = offsets.to(torch.int32).T.contiguous().T
    assert not offsets.is_contiguous()
    check_forward(x, grad, perm.to(torch.int32), lam, offsets)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_lambda_endpoints(lam):
    x, grad, perm, _, offsets = _inputs(4, 3, 6, 10, 8, seed=5)
    check_forward(x, grad, perm, torch.full((4,), lam, device=DEVICE), offsets)


def test_four_launches_forward_one_backward(monkeypatch):
    calls: list[str] = []
    original = _launch.Launch.__call__

    def counted(self):
        calls.append(self.kernel.__name__)
        original(self)

    monkeypatch.setattr(_launch.Launch, "__call__", counted)
    x, grad, perm, lam, offsets = _inputs(3, 3, 6, 7, 5, seed=6)
    _, _, shift, weight = kernels.sage_forward(x, grad, perm, lam, offsets, 1.0, 5)
    assert len(calls) == 4, calls
    calls.clear()
    kernels.sage_backward(x, weight, perm, shift)
    assert calls == ["sage_backward_kernel"]
