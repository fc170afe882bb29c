"""The C++ CPU kernels of blend_sources (``torch.ops.rmix_fast.blend_sources_cpp`` and its backward) against the
reference (``rmix_fast.reference.blend_sources``), called through torch.ops directly: the op's Python
registration is not part of the package yet. Small shapes: B up to 4, C up to 3, low-res maps up to 3x5 at
scales 1, 2, 3, 4 and 16, N = 1, 2, 3; both modes and normalisations; every dtype, logits in another dtype
than x; contiguous, channels_last and strided inputs and gradients; int32 index; thread-count independence;
errors."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import rmix_fast  # noqa: F401  (loads the compiled library)
from rmix_fast.ops._extension import EXTENSION_PROBLEM
from rmix_fast.reference.blend_sources import blend_sources_backward, blend_sources_forward

pytestmark = pytest.mark.skipif(
    EXTENSION_PROBLEM is not None or not hasattr(torch.ops.rmix_fast, "blend_sources_cpp"),
    reason=f"the compiled extension with blend_sources_cpp is not built: {EXTENSION_PROBLEM}",
)

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MODES = ("bilinear", "nearest")
NORMALIZE = ("softmax", "none")
# Relative to the largest magnitude of the reference's result: float32 and float64 differ from it only in the
# rounding of exp, of the interpolation's sums and of the order of the adjoint's sums; float16 / bfloat16
# results may round to the neighbouring value where the float32 result lies near a tie.
TOL = {torch.float16: 2**-10, torch.bfloat16: 2**-7, torch.float32: 1e-6, torch.float64: 1e-12}


def cpp(x, index, logits, scale, mode, normalize, validate=True):
    return torch.ops.rmix_fast.blend_sources_cpp(x, index, logits, scale, mode, normalize, validate)


def cpp_backward(g, x, index, logits, scale, mode, normalize):
    return torch.ops.rmix_fast.blend_sources_cpp_backward(g, x, index, logits, scale, mode, normalize)


def inputs(B, C, N, h, w, scale, dtype, logits_dtype=None, seed=0, index_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, h * scale, w * scale, generator=g).to(dtype)
    index = torch.stack([torch.randperm(B, generator=g) for _ in range(N)]).to(index_dtype)
    logits = (2 * torch.randn(B, N, h, w, generator=g)).to(logits_dtype or dtype)
    grad = torch.randn(B, C, h * scale, w * scale, generator=g).to(dtype)
    return x, index, logits, grad


def accumulate(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def assert_close(got, want, dtype, what, computed_in=None):
    """Within TOL of the result's dtype, or of ``computed_in`` (the other input's accumulate dtype: float32
    weights limit a float64 blend, a float32 blend limits float64 logits' gradient) where that is coarser."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    tol = max(TOL[dtype], TOL[computed_in or dtype])
    bound = tol * (1 + want.double().abs().max().item() if want.numel() else 1)
    assert err <= bound, f"{what}: max difference {err:.3g} > {bound:.3g}"


def check_case(x, index, logits, grad, scale, mode, normalize, what):
    mixed = cpp(x, index, logits, scale, mode, normalize)
    want = blend_sources_forward(x, index, logits, scale, mode, normalize)
    assert_close(mixed, want, x.dtype, f"{what}: mixed", accumulate(logits.dtype))
    assert (
        mixed.is_contiguous(memory_format=torch.channels_last) == want.is_contiguous(memory_format=torch.channels_last)
        and mixed.is_contiguous() == want.is_contiguous()
    ), f"{what}: mixed's layout"
    gx, gl = cpp_backward(grad, x, index, logits, scale, mode, normalize)
    want_gx, want_gl = blend_sources_backward(grad, x, index, logits, scale, mode, normalize)
    assert_close(gx, want_gx, grad.dtype, f"{what}: grad_x", accumulate(logits.dtype))
    assert gx.stride() == want_gx.stride(), f"{what}: grad_x's layout"
    assert_close(gl, want_gl, logits.dtype, f"{what}: grad_logits", accumulate(x.dtype))
    assert gl.is_contiguous(), f"{what}: grad_logits is contiguous"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("N", [1, 2, 3])
def test_against_reference(mode, normalize, scale, N):
    for (B, C, h, w), dtype in itertools.product([(4, 3, 3, 5), (1, 1, 1, 1), (3, 2, 2, 3)], DTYPES):
        x, index, logits, grad = inputs(B, C, N, h, w, scale, dtype, seed=B * 100 + scale)
        check_case(x, index, logits, grad, scale, mode, normalize, f"{dtype} B={B} C={C} {h}x{w}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", NORMALIZE)
def test_scale_16(mode, normalize):
    x, index, logits, grad = inputs(2, 3, 3, 2, 3, 16, torch.float32, seed=16)
    check_case(x, index, logits, grad, 16, mode, normalize, "scale 16")


@pytest.mark.parametrize(
    "x_dtype, logits_dtype",
    [
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float64),
    ],
)
def test_logits_dtype_differs(x_dtype, logits_dtype):
    for mode, normalize in itertools.product(MODES, NORMALIZE):
        x, index, logits, grad = inputs(3, 2, 2, 3, 5, 2, x_dtype, logits_dtype, seed=7)
        check_case(x, index, logits, grad, 2, mode, normalize, f"{mode} {normalize}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_layouts(dtype):
    """channels_last, strided (a W slice) and expanded inputs and gradients; int32 index; strided logits."""
    x, index, logits, grad = inputs(3, 3, 3, 3, 5, 2, dtype, seed=3, index_dtype=torch.int32)
    cl = torch.channels_last
    wide = torch.zeros(3, 3, 6, 20, dtype=dtype)
    wide[..., ::2] = x
    strided_logits = torch.zeros(3, 3, 3, 10, dtype=dtype)
    strided_logits[..., 1::2] = logits
    cases = {
        "channels_last": (x.contiguous(memory_format=cl), grad.contiguous(memory_format=cl), logits),
        "channels_last x, contiguous grad": (x.contiguous(memory_format=cl), grad, logits),
        "contiguous x, channels_last grad": (x, grad.contiguous(memory_format=cl), logits),
        "strided": (wide[..., ::2], grad.transpose(2, 3).contiguous().transpose(2, 3), strided_logits[..., 1::2]),
        "expanded grad": (x, torch.randn(1, 3, 1, 10).to(dtype).expand(3, 3, 6, 10), logits),
        "channels_last logits": (x, grad, logits.contiguous(memory_format=cl)),
    }
    for mode, normalize in itertools.product(MODES, NORMALIZE):
        reference = cpp(x, index, logits, 2, mode, normalize)
        for what, (xc, gc, lc) in cases.items():
            check_case(xc, index, lc, gc, 2, mode, normalize, f"{what}, {mode} {normalize}")
            if what.startswith("channels_last") or what == "strided":
                # the same sums in the same order whatever the layout
                assert torch.equal(cpp(xc, index, lc, 2, mode, normalize), reference), what


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [2, 3, 4, 5, 7, 16])
def test_upsampling_is_atens(mode, scale):
    """With one source of ones and no normalisation, mixed is the upsampled map itself: nearest picks ATen's
    cells exactly, bilinear rounds within an ulp of it."""
    for dtype in (torch.float32, torch.float64):
        logits = torch.randn(2, 1, 3, 5, generator=torch.Generator().manual_seed(scale), dtype=dtype)
        x = torch.ones(2, 1, 3 * scale, 5 * scale, dtype=dtype)
        got = cpp(x, torch.tensor([[0, 1]]), logits, scale, mode, "none")
        kw = {"align_corners": False} if mode == "bilinear" else {}
        want = F.interpolate(logits, scale_factor=scale, mode=mode, **kw)
        if mode == "nearest":
            assert torch.equal(got, want)
        else:
            assert_close(got, want, dtype, f"bilinear x{scale}")


def test_equal_logits_average():
    x = torch.randn(2, 3, 4, 4)
    index = torch.tensor([[0, 1], [1, 0]])
    mixed = cpp(x, index, torch.zeros(2, 2, 2, 2), 2, "bilinear", "softmax")
    assert torch.equal(mixed, 0.5 * x + 0.5 * x.flip(0))


def test_thread_count_independent():
    x, index, logits, grad = inputs(4, 3, 3, 4, 1, 16, torch.float32, seed=11)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for mode, normalize in itertools.product(MODES, NORMALIZE):
                results.append(
                    (
                        n,
                        cpp(x, index, logits, 16, mode, normalize),
                        *cpp_backward(grad, x, index, logits, 16, mode, normalize),
                    )
                )
    finally:
        torch.set_num_threads(threads)
    half = len(results) // 2
    for one, two in zip(results[:half], results[half:], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(one[1:], two[1:], strict=True))


def test_empty_batch():
    x = torch.randn(0, 3, 4, 4)
    mixed = cpp(x, torch.zeros(2, 0, dtype=torch.long), torch.randn(0, 2, 2, 2), 2, "bilinear", "softmax")
    assert mixed.shape == x.shape
    gx, gl = cpp_backward(x, x, torch.zeros(2, 0, dtype=torch.long), torch.randn(0, 2, 2, 2), 2, "nearest", "none")
    assert gx.shape == x.shape and gl.shape == (0, 2, 2, 2)


def test_errors():
    x, index, logits, grad = inputs(3, 2, 2, 2, 3, 2, torch.float32)
    args = ("bilinear", "softmax")
    with pytest.raises(ValueError, match=r"index row 1 must be a permutation of 0\.\.2"):
        cpp(x, torch.tensor([[0, 1, 2], [0, 0, 2]]), logits, 2, *args)
    with pytest.raises(ValueError, match=r"index must hold indices in \[0, 2\], got values in \[0, 3\]"):
        cpp(x, torch.tensor([[0, 1, 2], [3, 1, 0]]), logits, 2, *args)
    with pytest.raises(ValueError, match="index must hold indices in"):  # still range-checked without validate
        cpp(x, torch.tensor([[0, 1, 2], [-1, 1, 0]]), logits, 2, *args, validate=False)
    cpp(x, torch.tensor([[0, 1, 2], [0, 0, 2]]), logits, 2, *args, validate=False)  # in bounds, no error
    cpp_backward(grad, x, torch.tensor([[0, 1, 2], [0, 0, 2]]), logits, 2, *args)
    bad = logits.clone()
    bad[1, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="logits must be finite; got 1 non-finite"):
        cpp(x, index, bad, 2, *args)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        cpp(x.int(), index, logits, 2, *args)
    with pytest.raises(ValueError, match="x must be 4-D"):
        cpp(x[0], index, logits, 2, *args)
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        cpp(x, index.float(), logits, 2, *args)
    with pytest.raises(ValueError, match=r"index must have shape \(N, 3\) with N >= 1"):
        cpp(x, index[:, :2], logits, 2, *args)
    with pytest.raises(ValueError, match=r"index must have shape \(N, 3\) with N >= 1"):
        cpp(x, index[:0], logits[:, :0], 2, *args)
    with pytest.raises(TypeError, match="logits must be float16"):
        cpp(x, index, logits.long(), 2, *args)
    with pytest.raises(ValueError, match=r"logits must have shape \(B, N, h, w\) = \(3, 2, h, w\)"):
        cpp(x, index, logits, 4, *args)
    with pytest.raises(ValueError, match=r"logits must have shape"):
        cpp(x, index, logits[:, :1], 2, *args)
    with pytest.raises(ValueError, match="scale must be >= 1, got 0"):
        cpp(x, index, logits, 0, *args)
    with pytest.raises(ValueError, match="mode must be 'bilinear' or 'nearest', got 'bicubic'"):
        cpp(x, index, logits, 2, "bicubic", "softmax")
    with pytest.raises(ValueError, match="normalize must be 'softmax' or 'none', got 'sum'"):
        cpp(x, index, logits, 2, "nearest", "sum")
    with pytest.raises(ValueError, match="grad_out must have x's shape"):
        cpp_backward(grad[:, :1], x, index, logits, 2, *args)
    with pytest.raises(TypeError, match="grad_out must have x's dtype"):
        cpp_backward(grad.double(), x, index, logits, 2, *args)
