"""``rmix_fast.sage`` on every backend against the float64 transcription of its semantics
(``helpers/sage_transcription.py``): dtypes, layouts, odd and non-square images, images smaller than the
blur, B = 1, extreme and single shifts, zero and non-finite saliency, scalar / 0-d / expanded / strided λ,
the backward, determinism, bad input.

The chosen shift must be the transcription's, except where the transcription's best two scores lie within
rounding of each other; the outputs are then compared with the transcription mixed at the backend's own
shift, so a near-tie never loosens the pixel comparison."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import rmix_fast
from tests.helpers.cases import BACKENDS as ALL_BACKENDS
from tests.helpers.cases import DEVICE, layout
from tests.helpers.sage_transcription import transcribe

# "cpp" runs sage on the CPU only.
BACKENDS = [b for b in ALL_BACKENDS if not (b == "cpp" and DEVICE.type != "cpu")]
# Relative rounding of a score, per dtype of grad (the saliency is computed in float32 unless float64).
SCORE_RTOL = {torch.float64: 1e-12}
DEFAULT_SCORE_RTOL = 1e-5
# mixed against the transcription cast to x's dtype: (rtol, atol)
MIXED_TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def random_offsets(K: int, H: int, W: int, g: torch.Generator, extremes: bool = True) -> Tensor:
    dy = torch.randint(-(H - 1), H, (K,), generator=g)
    dx = torch.randint(-(W - 1), W, (K,), generator=g)
    offsets = torch.stack([dy, dx], dim=1)
    if extremes and K >= 4:  # the four corners of the shift range
        offsets[:4] = torch.tensor([[H - 1, W - 1], [-(H - 1), -(W - 1)], [H - 1, -(W - 1)], [0, 0]])
    return offsets


def make(B=4, C=3, H=9, W=13, K=16, dtype=torch.float32, grad_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g).to(dtype)
    grad = (torch.randn(B, C, H, W, generator=g) * torch.rand(B, 1, H, W, generator=g) ** 4).to(grad_dtype or dtype)
    perm = torch.randperm(B, generator=g)
    lam = torch.rand(B, generator=g) * 0.8 + 0.1
    return x, grad, perm, lam, random_offsets(K, H, W, g)


def check(backend: str, x: Tensor, grad: Tensor, perm: Tensor, lam, offsets: Tensor, **kw) -> Tensor:
    """Runs the backend on ``DEVICE`` and compares with the transcription; returns the backend's shift."""
    dev = [t.to(DEVICE) if isinstance(t, Tensor) else t for t in (x, grad, perm, lam, offsets)]
    mixed, lam_eff, shift = rmix_fast.sage(
        dev[0], dev[1], perm=dev[2], lam=dev[3], offsets=dev[4], backend=backend, **kw
    )
    mixed, lam_eff, shift = mixed.cpu(), lam_eff.cpu(), shift.cpu()
    assert mixed.dtype == x.dtype and mixed.shape == x.shape and lam_eff.dtype == torch.float32
    assert shift.dtype == torch.int64 and shift.shape == (x.shape[0], 2)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert mixed.is_contiguous(memory_format=torch.channels_last)
    lam_t = lam if isinstance(lam, Tensor) else torch.tensor(float(lam))
    want = transcribe(x, grad, perm, lam_t, offsets, **kw)
    rtol = SCORE_RTOL.get(grad.dtype, DEFAULT_SCORE_RTOL)
    index = {tuple(d): k for k, d in reversed(list(enumerate(offsets.tolist())))}  # first index of each shift
    for b in range(x.shape[0]):
        if not torch.equal(shift[b], want.shift[b]):
            got_score = want.scores[b, index[tuple(shift[b].tolist())]]
            best = want.scores[b].max()
            assert best - got_score <= rtol * best.abs() + 1e-300, (b, shift[b], want.shift[b], got_score, best)
    at_own = transcribe(x, grad, perm, lam_t, offsets, force_shift=shift, **kw)
    rt, at = MIXED_TOL[x.dtype]
    torch.testing.assert_close(mixed, at_own.mixed.to(x.dtype), rtol=rt, atol=at, equal_nan=True)
    torch.testing.assert_close(lam_eff.double(), at_own.lam_eff, rtol=1e-5, atol=1e-6)
    return shift


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_every_dtype_against_the_transcription(backend, dtype):
    check(backend, *make(dtype=dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_in_another_dtype(backend):
    check(backend, *make(dtype=torch.bfloat16, grad_dtype=torch.float32))
    check(backend, *make(dtype=torch.float32, grad_dtype=torch.float16, seed=1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["channels_last", "strided", "transposed"])
def test_layouts(backend, kind):
    x, grad, perm, lam, offsets = make(seed=2)
    check(backend, layout(x, kind), layout(grad, kind), perm, lam, offsets)
    check(backend, layout(x, kind), grad, perm, lam, offsets)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("B", "C", "H", "W", "K"), [(1, 3, 8, 8, 9), (3, 1, 2, 3, 6), (2, 2, 1, 5, 5), (5, 3, 16, 7, 30)]
)
def test_shapes(backend, B, C, H, W, K):
    check(backend, *make(B=B, C=C, H=H, W=W, K=K, seed=B + H))


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_rearrangement_the_shift_is_zero(backend):
    x, grad, perm, lam, _ = make(seed=3)
    shift = check(backend, x, grad, perm, lam, torch.zeros(1, 2, dtype=torch.int64))
    assert not shift.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_and_non_finite_saliency_fall_back_to_uniform(backend):
    x, grad, perm, lam, offsets = make(B=4, seed=4)
    grad[0] = 0
    grad[1, 0, 2, 3] = float("nan")
    grad[2, 1, 0, 0] = float("inf")
    mixed, lam_eff, _ = rmix_fast.sage(
        x.to(DEVICE), grad.to(DEVICE), perm=perm.to(DEVICE), lam=lam.to(DEVICE), offsets=offsets.to(DEVICE),
        backend=backend,
    )  # fmt: skip
    assert torch.isfinite(mixed).all() and torch.isfinite(lam_eff).all()
    check(backend, x, grad, perm, lam, offsets)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lam_forms(backend):
    x, grad, perm, _, offsets = make(seed=5)
    check(backend, x, grad, perm, 0.3, offsets)
    check(backend, x, grad, perm, torch.tensor(0.7), offsets)  # 0-d
    check(backend, x, grad, perm, torch.tensor([0.4]).expand(4), offsets)  # stride 0
    check(
        backend, x, grad, perm, torch.tensor([0.0, 9.0, 1.0, 9.0, 0.5, 9.0, 0.2, 9.0])[::2], offsets
    )  # strided, 0 and 1
    check(backend, x, grad, perm.to(torch.int32), 0.5, offsets.to(torch.int32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_blur_options(backend):
    check(backend, *make(seed=6), sigma=2.5, kernel_size=7)
    check(backend, *make(seed=7), sigma=0.5, kernel_size=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_against_the_transcription(backend):
    x, grad, perm, lam, offsets = make(seed=8)
    xd = x.detach().clone().to(DEVICE).requires_grad_(True)
    mixed, _, shift = rmix_fast.sage(xd, grad.to(DEVICE), perm=perm.to(DEVICE), lam=lam.to(DEVICE),
                                     offsets=offsets.to(DEVICE), backend=backend)  # fmt: skip
    w = torch.randn(mixed.shape, generator=torch.Generator().manual_seed(9))
    (mixed * w.to(DEVICE)).sum().backward()
    x64 = x.double().requires_grad_(True)
    want = transcribe(x64, grad, perm, lam, offsets, force_shift=shift.cpu())
    (want.mixed * w.double()).sum().backward()
    torch.testing.assert_close(xd.grad.cpu().double(), x64.grad, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    x, grad, perm, lam, offsets = (t.to(DEVICE) for t in make(seed=10))
    a = rmix_fast.sage(x, grad, perm=perm, lam=lam, offsets=offsets, backend=backend)
    b = rmix_fast.sage(x, grad, perm=perm, lam=lam, offsets=offsets, backend=backend)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, grad, perm, _, offsets = make(B=1)
    mixed, lam_eff, shift = rmix_fast.sage(x[:0].to(DEVICE), grad[:0].to(DEVICE), perm=perm[:0].to(DEVICE),
                                           lam=0.5, offsets=offsets.to(DEVICE), backend=backend)  # fmt: skip
    assert mixed.shape == (0, 3, 9, 13) and lam_eff.shape == (0,) and shift.shape == (0, 2)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: {**a, "offsets": a["offsets"][:0]}, ValueError, r"offsets must have shape \(K, 2\) with K >= 1"),
        (lambda a: {**a, "offsets": a["offsets"].float()}, TypeError, "offsets must be an integer tensor"),
        (lambda a: {**a, "offsets": a["offsets"][:, :1]}, ValueError, r"offsets must have shape \(K, 2\)"),
        (lambda a: {**a, "offsets": a["offsets"] * 0 + 9}, ValueError, r"offsets must hold shifts .* \|dy\| < H=9"),
        (lambda a: {**a, "perm": a["perm"] * 0}, ValueError, "perm must be a permutation"),
        (lambda a: {**a, "lam": 1.5}, ValueError, r"lam must lie in \[0, 1\]"),
        (lambda a: {**a, "lam": a["lam"] + 1}, ValueError, r"lam must lie in \[0, 1\]"),
        (lambda a: {**a, "kernel_size": 4}, ValueError, "kernel_size must be odd"),
        (lambda a: {**a, "sigma": 0.0}, ValueError, "sigma must be a finite number > 0"),
        (lambda a: {**a, "grad": a["grad"][:, :1]}, ValueError, "grad must have x's shape"),
        (lambda a: {**a, "backend": "nope"}, ValueError, "backend must be 'auto' or one of"),
    ],
)
def test_bad_input(change, error, match):
    x, grad, perm, lam, offsets = (t.to(DEVICE) for t in make())
    args = change({"grad": grad, "perm": perm, "lam": lam, "offsets": offsets, "kernel_size": 5, "sigma": 1.0,
                   "backend": "reference"})  # fmt: skip
    with pytest.raises(error, match=match):
        rmix_fast.sage(x, args.pop("grad"), **args)
