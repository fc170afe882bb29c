"""Shared builders and comparisons for the R-Mix tests.

``check_against_reference`` is the heart: it runs a backend, then
1. compares its mask with the reference mask, allowing a cell to differ only when the reference
   saliency of that cell lies within float rounding of the reference threshold (and counting them);
2. recomputes the reference blend *with the backend's own mask* and compares mixed / lam_eff with
   per-dtype tolerances, so mask rounding never loosens the pixel comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import rmix_fast
from rmix_fast import reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = [name for name, info in rmix_fast.available_backends(DEVICE).items() if info.available]
PAPER_LEVELS = [round(0.11 * k, 2) for k in range(10)]  # 0, 0.11, ..., 0.99


def _interpreted() -> bool:
    from rmix_fast.ops._backends import TRITON_PROBLEM

    if TRITON_PROBLEM is not None:
        return False
    from rmix_fast.ops._triton._launch import INTERPRETED

    return INTERPRETED


TRITON_INTERPRETED = _interpreted()


def assert_blend_equal(backend: str, got: Tensor, want: Tensor) -> None:
    """A blend output (mixed or its gradient) equals the reference's bit for bit: every backend evaluates
    the same formula, each operation rounded, without FMA (see tests/ops/test_bit_exact.py). The one
    exception is a test tool: the Triton interpreter converts float32 to bfloat16 by truncation where
    compiled code rounds to nearest, so an interpreted bfloat16 result may be one ulp off, never more."""
    if backend == "triton" and TRITON_INTERPRETED and got.dtype == torch.bfloat16:
        torch.testing.assert_close(got, want, rtol=2**-7, atol=0, equal_nan=True)
        return
    same = (got == want) | (got.isnan() & want.isnan())
    assert same.all(), f"{backend}: {int((~same).sum())} of {got.numel()} elements differ from the reference"


@dataclass
class Case:
    x: Tensor
    grad: Tensor
    perm: Tensor
    lam: float | Tensor
    q: float | Tensor
    grid: int

    def kwargs(self) -> dict:
        return {"perm": self.perm, "lam": self.lam, "q": self.q, "grid": self.grid}


def layout(t: Tensor, kind: str) -> Tensor:
    """The same values as ``t`` in another memory layout: contiguous, channels_last or a strided view."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # every other column of a wider tensor: non-dense, not channels_last
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    if kind == "transposed":  # H and W swapped in memory
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    raise ValueError(kind)


def make_case(
    B: int = 4,
    C: int = 3,
    H: int = 16,
    W: int = 16,
    grid: int = 4,
    *,
    dtype: torch.dtype = torch.float32,
    grad_dtype: torch.dtype | None = None,
    x_layout: str = "contiguous",
    grad_layout: str = "contiguous",
    lam: float | str = "per_sample",
    q: float | str = "per_sample",
    seed: int = 0,
    device: torch.device = DEVICE,
) -> Case:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g).to(dtype)
    grad = torch.randn(B, C, H, W, generator=g).to(grad_dtype or dtype)
    perm = torch.randperm(B, generator=g)
    if lam == "per_sample":  # includes the endpoints 0 and 1
        lam_v: float | Tensor = torch.rand(B, generator=g)
        lam_v[: min(B, 2)] = torch.tensor([0.0, 1.0])[: min(B, 2)]
        lam_v = lam_v.to(device)
    else:
        lam_v = float(lam)
    if q == "per_sample":
        levels = torch.tensor([*PAPER_LEVELS, 1.0])
        q_v: float | Tensor = levels[torch.randint(len(levels), (B,), generator=g)].to(device)
    else:
        q_v = float(q)
    return Case(layout(x.to(device), x_layout), layout(grad.to(device), grad_layout), perm.to(device), lam_v, q_v, grid)


def as_tensor(v: float | Tensor, B: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return v if isinstance(v, Tensor) else torch.full((B,), v, dtype=dtype, device=device)


def near_threshold(grad: Tensor, q: Tensor, grid: int) -> Tensor:
    """(B, p, p) True where a cell's reference saliency lies within float rounding of its threshold.

    Bound: summing n terms in float carries a relative error up to about n*eps (n = cell area plus the
    channel sum); the threshold interpolation adds a few eps of the largest value.
    """
    S = reference.cell_saliency(grad, grid)
    flat = S.flatten(1)
    finite = torch.isfinite(flat).all(dim=1, keepdim=True)
    usable = torch.where(finite, flat, torch.zeros_like(flat))
    t = reference.percentile_threshold(usable, q)
    eps = torch.finfo(S.dtype).eps
    n_terms = (grad.shape[-2] // grid) * (grad.shape[-1] // grid) + grad.shape[1] + 8
    tol = n_terms * eps * usable.abs().amax(dim=1, keepdim=True)
    near = ((usable - t[:, None]).abs() <= tol) & finite
    return near.view_as(S)


def check_against_reference(backend: str, case: Case) -> int:
    """Asserts the backend matches the reference on ``case``; returns how many cells flipped at the threshold."""
    x, grad = case.x, case.grad
    B = x.shape[0]
    mixed, lam_eff, mask = rmix_fast.rmix(x, grad, **case.kwargs(), backend=backend, return_mask=True)

    assert mixed.shape == x.shape and mixed.dtype == x.dtype and mixed.device == x.device
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert mixed.is_contiguous(memory_format=torch.channels_last), "mixed lost x's channels_last format"
    assert lam_eff.shape == (B,) and lam_eff.dtype == torch.float32
    assert mask.shape == (B, case.grid, case.grid) and mask.dtype == torch.bool

    q_t = as_tensor(case.q, B, reference.accumulate_dtype(grad.dtype), x.device)
    lam_t = as_tensor(case.lam, B, reference.accumulate_dtype(x.dtype), x.device)
    ref_mask = reference.saliency_mask(reference.cell_saliency(grad, case.grid), q_t)
    flipped = mask != ref_mask
    unexplained = flipped & ~near_threshold(grad, q_t, case.grid)
    assert not unexplained.any(), (
        f"{backend}: {int(unexplained.sum())} mask cells differ from the reference away from the threshold "
        f"(samples {unexplained.flatten(1).any(1).nonzero().flatten().tolist()})"
    )

    want_mixed, want_lam_eff = reference.blend_regions_forward(
        x, reference.regions_from_mask(mask, case.perm), case.perm, lam_t
    )
    assert_blend_equal(backend, mixed, want_mixed)
    assert torch.equal(lam_eff, want_lam_eff)
    return int(flipped.sum())


def make_regions(B: int, gh: int, gw: int, seed: int = 0, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (B, gh, gw), generator=g).to(dtype).to(DEVICE)
