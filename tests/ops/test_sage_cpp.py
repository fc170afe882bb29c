"""The C++ CPU kernels of SAGE (``torch.ops.rmix_fast.sage_cpp``) against the reference
(``rmix_fast.reference.sage``), called through torch.ops directly: their own details beyond ``test_sage.py``'s
comparison of every backend. Small shapes: odd, non-square, H or W below the blur's size, B = 1; the extreme shifts;
lam 0, 1 and per sample; zero and NaN gradients; every dtype; channels_last and strided inputs; int32 perm
and offsets; the backward; thread-count independence; errors."""

from __future__ import annotations

import pytest
import torch

import rmix_fast  # noqa: F401  (loads the compiled library)
from rmix_fast.ops._extension import EXTENSION_PROBLEM
from rmix_fast.reference.sage import sage_backward, sage_forward, sage_saliency, sage_scores

pytestmark = pytest.mark.skipif(
    EXTENSION_PROBLEM is not None or not hasattr(torch.ops.rmix_fast, "sage_cpp"),
    reason=f"the compiled extension with sage_cpp is not built: {EXTENSION_PROBLEM}",
)

# A chosen shift may differ from the reference's only where the reference's best two scores are this close
# (relative): the two sum the same float32 terms in different orders.
TIE = 1e-6
# Weight, lam_eff and float32 / float64 pixels.
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
LAYOUTS = (torch.contiguous_format, torch.channels_last)


def cpp(x, grad, perm, lam, offsets, sigma=1.0, k=5, validate=True):
    return torch.ops.rmix_fast.sage_cpp(x, grad, perm, lam, offsets, sigma, k, validate)


def reference_scores(grad, perm, lam, offsets, sigma, k):
    """The reference's (B, K) scores, from its public pieces (the same steps as sage_forward)."""
    s = sage_saliency(grad, sigma, k)
    lam = lam.to(s.dtype)
    a = lam.clamp_min(1e-12)[:, None, None] * (s / s.sum(dim=(1, 2), keepdim=True))
    p = s[perm.long()]
    c = (1 - lam).clamp_min(1e-12)[:, None, None] * (p / p.sum(dim=(1, 2), keepdim=True))
    return sage_scores(a, c, offsets)


def offsets_for(H, W, K, seed, extremes=True):
    g = torch.Generator().manual_seed(seed)
    off = torch.stack([torch.randint(-H + 1, H, (K,), generator=g), torch.randint(-W + 1, W, (K,), generator=g)], 1)
    if extremes:
        corners = torch.tensor([[0, 0], [H - 1, W - 1], [-(H - 1), -(W - 1)], [H - 1, -(W - 1)], [0, W - 1]])
        off = torch.cat([off, corners])[torch.randperm(K + 5, generator=g)]
    return off


def tolerance(dtype):
    return TOL.get(dtype, 1e-6)


def assert_pixels(got, want, what):
    if want.dtype in TOL:
        torch.testing.assert_close(got, want, rtol=TOL[want.dtype], atol=TOL[want.dtype], msg=what)
    else:  # float16 / bfloat16: one rounding of the output apart at most
        eps = torch.finfo(want.dtype).eps
        diff = (got.double() - want.double()).abs()
        assert bool((diff <= eps * want.double().abs().clamp_min(1) + 1e-30).all()), f"{what}: {diff.max()}"


def same_layout(a, b):
    """The same memory format (strides of size-1 dimensions do not matter)."""
    return all(a.is_contiguous(memory_format=f) == b.is_contiguous(memory_format=f) for f in LAYOUTS)


def check_forward(x, grad, perm, lam, offsets, sigma=1.0, k=5):
    """Compares every output with the reference; where the chosen shift differs (a near tie, checked), with the
    reference evaluated at the C++ shift. Returns the C++ outputs."""
    got = cpp(x, grad, perm, lam, offsets, sigma, k)
    want = sage_forward(x, grad, perm, lam, offsets, sigma, k)
    mixed, lam_eff, shift, weight = got
    assert mixed.dtype == x.dtype and lam_eff.dtype == torch.float32 and shift.dtype == torch.int64
    assert weight.dtype == want[3].dtype and weight.shape == want[3].shape
    assert same_layout(mixed, want[0]), "mixed has the reference's memory format"
    differ = (shift != want[2]).any(dim=1)
    if differ.any():
        scores = reference_scores(grad, perm, lam, offsets, sigma, k).double()
        best = scores.max(dim=1).values
        for b in differ.nonzero().flatten().tolist():
            k_got = int(((offsets.long() == shift[b]).all(dim=1)).nonzero()[0])
            gap = float(best[b] - scores[b, k_got])
            assert gap <= TIE * float(best[b].abs().clamp_min(1e-30)), f"sample {b}: shift {shift[b]} loses by {gap}"
            # The rest of sample b as the reference makes it with C++'s shift as the only candidate.
            alt = sage_forward(x, grad, perm, lam, shift[b : b + 1], sigma, k)
            for i in range(4):
                want[i][b] = alt[i][b]
    assert torch.equal(shift, want[2])
    tol = tolerance(weight.dtype)
    torch.testing.assert_close(weight, want[3], rtol=0, atol=tol, equal_nan=True)
    torch.testing.assert_close(lam_eff, want[1], rtol=0, atol=max(tol, 1e-6), equal_nan=True)
    assert_pixels(mixed, want[0], "mixed")
    return got


def check_backward(go, weight, perm, shift):
    """The backward has no reduction: bit-identical to the reference given the same weight and shift."""
    got = torch.ops.rmix_fast.sage_cpp_backward(go, weight, perm, shift)
    want = sage_backward(go, weight, perm, shift)
    assert got.dtype == want.dtype and same_layout(got, want)
    assert torch.equal(got, want)


def make(B, C, H, W, dtype=torch.float32, grad_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g).to(dtype)
    grad = torch.randn(B, C, H, W, generator=g).to(grad_dtype or dtype)
    perm = torch.randperm(B, generator=g)
    lam = torch.rand(B, generator=g, dtype=torch.float64)  # in grad's accumulate dtype, as the op passes it
    lam = lam if grad.dtype == torch.float64 else lam.float()
    return x, grad, perm, lam


SHAPES = [(4, 3, 7, 9), (6, 1, 20, 13), (2, 3, 4, 17), (3, 3, 16, 3), (1, 3, 8, 8), (5, 1, 1, 6), (2, 2, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_matches_reference(shape, dtype):
    B, _, H, W = shape
    x, grad, perm, lam = make(*shape, dtype=dtype, seed=B * 100 + H)
    offsets = offsets_for(H, W, 35, seed=H * W)
    _, _, shift, weight = check_forward(x, grad, perm, lam, offsets)
    go = torch.randn(x.shape).to(dtype)
    check_backward(go, weight, perm, shift)


@pytest.mark.parametrize(
    ("x_dtype", "grad_dtype"),
    [
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float64),
    ],
    ids=str,
)
def test_mixed_dtypes(x_dtype, grad_dtype):
    x, grad, perm, lam = make(4, 3, 9, 11, dtype=x_dtype, grad_dtype=grad_dtype, seed=3)
    _, _, shift, weight = check_forward(x, grad, perm, lam, offsets_for(9, 11, 20, seed=4))
    # the backward takes a weight of another float dtype than grad_out
    check_backward(torch.randn(x.shape).to(x_dtype), weight, perm, shift)


@pytest.mark.parametrize("lam_kind", ["zero", "one", "ends"])
def test_lam_ends(lam_kind):
    x, grad, perm, lam = make(5, 3, 10, 7, seed=5)
    lam = {"zero": torch.zeros(5), "one": torch.ones(5), "ends": torch.tensor([0.0, 1.0, 0.5, 1.0, 0.0])}[lam_kind]
    _, _, shift, weight = check_forward(x, grad, perm, lam, offsets_for(10, 7, 30, seed=6))
    check_backward(torch.randn(x.shape), weight, perm, shift)


def test_zero_and_nan_gradients_fall_back_to_uniform_saliency():
    x, grad, perm, lam = make(5, 3, 9, 9, seed=7)
    grad[0] = 0
    grad[1, 2, 4, 4] = float("nan")
    grad[2, 0, 0, 0] = float("inf")
    check_forward(x, grad, perm, lam, offsets_for(9, 9, 30, seed=8))
    check_forward(x, torch.zeros_like(grad), perm, lam, offsets_for(9, 9, 30, seed=8))


def test_only_zero_shift_and_one_candidate():
    x, grad, perm, lam = make(4, 3, 6, 10, seed=9)
    _, _, shift, _ = check_forward(x, grad, perm, lam, torch.zeros(1, 2, dtype=torch.long))
    assert torch.equal(shift, torch.zeros(4, 2, dtype=torch.long))
    _, _, shift, _ = check_forward(x, grad, perm, lam, torch.tensor([[5, -9]]))  # the far corner only
    assert torch.equal(shift, torch.tensor([[5, -9]] * 4))


@pytest.mark.parametrize(("sigma", "k"), [(0.5, 3), (2.0, 9), (1.3, 1), (3.0, 15)])
def test_blur_sizes_and_repeated_reflection(sigma, k):
    x, grad, perm, lam = make(3, 2, 4, 6, seed=10)  # a kernel wider than the image reflects more than once
    check_forward(x, grad, perm, lam, offsets_for(4, 6, 20, seed=11), sigma, k)


@pytest.mark.parametrize("layout", ["channels_last", "strided", "transposed", "mixed"])
def test_layouts(layout):
    x, grad, perm, lam = make(4, 3, 9, 12, seed=12)
    offsets = offsets_for(9, 12, 30, seed=13)
    want = cpp(x, grad, perm, lam, offsets)
    go = torch.randn(x.shape)
    want_grad = torch.ops.rmix_fast.sage_cpp_backward(go, want[3], perm, want[2])

    def view(t):
        if layout == "channels_last" or (layout == "mixed" and t is x):
            return t.contiguous(memory_format=torch.channels_last)
        if layout == "strided" or layout == "mixed":
            wide = torch.zeros(*t.shape[:3], 2 * t.shape[3])
            wide[..., ::2] = t
            return wide[..., ::2]
        return t.transpose(2, 3).contiguous().transpose(2, 3)  # W-major memory

    got = check_forward(view(x), view(grad), perm, lam, offsets)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b), "layouts give the same bits"
    grad_x = torch.ops.rmix_fast.sage_cpp_backward(view(go), got[3], perm, got[2])
    check_backward(view(go), got[3], perm, got[2])
    assert torch.equal(grad_x, want_grad)
    if layout == "channels_last":
        assert got[0].is_contiguous(memory_format=torch.channels_last)
        assert grad_x.is_contiguous(memory_format=torch.channels_last)


def test_expanded_grad_out_and_int32_indices():
    x, grad, perm, lam = make(3, 3, 7, 5, seed=14)
    offsets = offsets_for(7, 5, 15, seed=15)
    want = cpp(x, grad, perm, lam, offsets)
    got = check_forward(x, grad, perm.int(), lam, offsets.int())
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    go = torch.randn(1, 3, 1, 5).expand(3, 3, 7, 5)
    check_backward(go, got[3], perm.int(), got[2].int())


def test_lam_in_float16_and_expanded():
    x, grad, perm, _ = make(4, 3, 8, 8, seed=16)
    lam = torch.tensor(0.3).expand(4)
    check_forward(x, grad, perm, lam, offsets_for(8, 8, 10, seed=17))
    check_forward(x, grad, perm, torch.full((4,), 0.7, dtype=torch.float16), offsets_for(8, 8, 10, seed=17))


def test_thread_count_does_not_change_results():
    x, grad, perm, lam = make(6, 3, 40, 33, seed=18)
    offsets = offsets_for(40, 33, 40, seed=19)
    go = torch.randn(x.shape)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = cpp(x, grad, perm, lam, offsets)
            cl = cpp(x.contiguous(memory_format=torch.channels_last), grad, perm, lam, offsets)
            back = torch.ops.rmix_fast.sage_cpp_backward(go, out[3], perm, out[2])
            results.append((*out, cl[0], back))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_empty_batch():
    x = torch.zeros(0, 3, 4, 4)
    none = torch.zeros(0, dtype=torch.long)
    mixed, lam_eff, shift, weight = cpp(x, x, none, torch.zeros(0), torch.zeros(1, 2, dtype=torch.long))
    assert mixed.shape == x.shape and lam_eff.shape == (0,) and shift.shape == (0, 2) and weight.shape == (0, 4, 4)


def test_unvalidated_out_of_range_values_stay_in_bounds():
    x, grad, perm, lam = make(3, 2, 5, 6, seed=20)
    far = torch.tensor([[100, -100], [2**62, 0], [-(2**62), 3]])
    mixed, _, shift, weight = cpp(x, grad, perm, lam, far, validate=False)
    assert torch.equal(shift[0], far[0]) or torch.equal(shift[0], far[1]) or torch.equal(shift[0], far[2])
    assert torch.isfinite(mixed).all()
    torch.ops.rmix_fast.sage_cpp_backward(torch.randn(x.shape), weight, torch.zeros(3, dtype=torch.long), shift)
    with pytest.raises(ValueError, match="perm must hold indices"):
        cpp(x, grad, torch.tensor([0, 1, 3]), lam, far, validate=False)


ERRORS = [
    (lambda a: {**a, "x": a["x"].int()}, TypeError, "x must be float16, bfloat16, float32 or float64"),
    (lambda a: {**a, "x": a["x"][0]}, ValueError, "x must be 4-D"),
    (lambda a: {**a, "grad": a["grad"].long()}, TypeError, "grad must be float16, bfloat16, float32 or float64"),
    (lambda a: {**a, "grad": a["grad"][:, :1]}, ValueError, "grad must have x's shape"),
    (lambda a: {**a, "perm": a["perm"].float()}, TypeError, "perm must be an integer tensor"),
    (lambda a: {**a, "perm": a["perm"][:2]}, ValueError, "perm must have shape"),
    (lambda a: {**a, "lam": a["lam"].int()}, TypeError, "lam must be a float tensor"),
    (lambda a: {**a, "lam": a["lam"][:1]}, ValueError, "lam must be a tensor of shape"),
    (lambda a: {**a, "offsets": a["offsets"].float()}, TypeError, "offsets must be an integer tensor"),
    (lambda a: {**a, "offsets": a["offsets"].bool()}, TypeError, "offsets must be an integer tensor"),
    (lambda a: {**a, "offsets": a["offsets"][:, :1]}, ValueError, r"offsets must have shape \(K, 2\)"),
    (lambda a: {**a, "offsets": a["offsets"][:0]}, ValueError, r"offsets must have shape \(K, 2\) with K >= 1"),
    (lambda a: {**a, "sigma": 0.0}, ValueError, "sigma must be a finite number > 0, got 0"),
    (lambda a: {**a, "sigma": float("inf")}, ValueError, "sigma must be a finite number > 0"),
    (lambda a: {**a, "k": 0}, ValueError, "kernel_size must be >= 1, got 0"),
    (lambda a: {**a, "k": 4}, ValueError, "kernel_size must be odd, got 4"),
    (lambda a: {**a, "perm": torch.zeros(3, dtype=torch.long)}, ValueError, "perm must be a permutation of 0..2"),
    (lambda a: {**a, "perm": torch.tensor([0, 1, 5])}, ValueError, r"perm must hold indices in \[0, 2\]"),
    (lambda a: {**a, "lam": torch.tensor([0.5, 1.5, 0.2])}, ValueError, r"lam must lie in \[0, 1\]"),
    (lambda a: {**a, "lam": torch.tensor([0.5, float("nan"), 0.2])}, ValueError, r"lam must lie in \[0, 1\]"),
    (
        lambda a: {**a, "offsets": torch.tensor([[0, 0], [5, -2]])},
        ValueError,
        r"offsets must hold shifts \(dy, dx\) with \|dy\| < H=5 and \|dx\| < W=6, got dy in \[0, 5\] and dx in "
        r"\[-2, 0\]",
    ),
]


@pytest.mark.parametrize(("edit", "error", "message"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors(edit, error, message):
    x, grad, perm, lam = make(3, 2, 5, 6, seed=21)
    one = torch.tensor([[0, 1]])
    args = edit({"x": x, "grad": grad, "perm": perm, "lam": lam, "offsets": one, "sigma": 1.0, "k": 5})
    with pytest.raises(error, match=message):
        cpp(args["x"], args["grad"], args["perm"], args["lam"], args["offsets"], args["sigma"], args["k"])


def test_backward_errors():
    go = torch.randn(3, 2, 5, 6)
    w, perm, shift = torch.rand(3, 5, 6), torch.tensor([2, 0, 1]), torch.zeros(3, 2, dtype=torch.long)
    back = torch.ops.rmix_fast.sage_cpp_backward
    with pytest.raises(TypeError, match="grad_out must be float16"):
        back(go.int(), w, perm, shift)
    with pytest.raises(ValueError, match=r"weight must have shape \(B, H, W\) = \(3, 5, 6\)"):
        back(go, w[:, :4], perm, shift)
    with pytest.raises(TypeError, match="weight must be float16"):
        back(go, w.int(), perm, shift)
    with pytest.raises(TypeError, match="shift must be an integer tensor"):
        back(go, w, perm, shift.float())
    with pytest.raises(ValueError, match=r"shift must have shape \(3, 2\)"):
        back(go, w, perm, shift[:, :1])
