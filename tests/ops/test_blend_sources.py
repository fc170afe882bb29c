"""The multi-source blend (``rmix_fast.blend_sources``, AdAutoMix's mixing): every backend against the float64
transcription (``tests/helpers/blend_sources_transcription.py``), forward and the gradients w.r.t. x and
logits, over dtypes, layouts, N, scales, modes and normalisations, index dtypes and logits in another dtype
than x; outputs laid out as the fakes say; float64 gradcheck w.r.t. both; autograd through a compiled graph;
the properties (a constant-weight mix is the linear mix, Mixup at 0.5, a dominant logit copies its source,
softmax weights sum to 1); bad input; B = 0. opcheck, compile fullgraph, gradcheck w.r.t. x and bad types
of every op: ``test_op_contracts.py``; the reference itself: ``test_blend_sources_reference.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import pytest
import torch
from torch import Tensor

import rmix_fast
from rmix_fast.ops.blend_sources import BLEND_SOURCES
from tests.helpers.blend_sources_transcription import transcribed_blend, transcribed_grads
from tests.helpers.cases import BACKENDS, DEVICE, TRITON_INTERPRETED, layout

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided", "transposed"]
# Relative error allowed against the float64 transcription (of the largest value, so that sums that cancel
# pass): the precision the op computes in (float32 unless x and logits are both float64), then the rounding
# of the result to its dtype.
# d logits sums up to 4 scale² C terms per value: float32 gets more room there.
COMPUTE_TOL = {torch.float64: 1e-12, torch.float32: 2e-6}
COMPUTE_TOL_LOGITS = {torch.float64: 1e-12, torch.float32: 2e-5}
ROUNDING_TOL = {torch.float64: 0.0, torch.float32: 0.0, torch.float16: 2**-10, torch.bfloat16: 2**-7}


@dataclass(frozen=True)
class Setup:
    """One case's shapes and options; its inputs are drawn from ``seed`` (hashable: the transcription of each
    setup is computed once, for every backend)."""

    B: int = 3
    C: int = 2
    N: int = 3
    h: int = 2
    w: int = 3
    scale: int = 4
    mode: str = "bilinear"
    normalize: str = "softmax"
    x_dtype: torch.dtype = torch.float32
    logits_dtype: torch.dtype = torch.float32
    seed: int = 0

    def inputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x, index, logits, grad_out) on the CPU, in their dtypes; index int64."""
        g = torch.Generator().manual_seed(self.seed)
        H, W = self.h * self.scale, self.w * self.scale
        x = torch.randn(self.B, self.C, H, W, generator=g).to(self.x_dtype)
        index = torch.stack([torch.randperm(self.B, generator=g) for _ in range(self.N)])
        logits = (2 * torch.randn(self.B, self.N, self.h, self.w, generator=g)).to(self.logits_dtype)
        grad_out = torch.randn(self.B, self.C, H, W, generator=g).to(self.x_dtype)
        return x, index, logits, grad_out

    def options(self) -> tuple[int, str, str]:
        return self.scale, self.mode, self.normalize

    def tolerances(self) -> tuple[float, float]:
        """(of the mix and d x, of d logits)."""
        compute = torch.float64 if self.x_dtype == self.logits_dtype == torch.float64 else torch.float32
        return (
            max(COMPUTE_TOL[compute], ROUNDING_TOL[self.x_dtype]),
            max(COMPUTE_TOL_LOGITS[compute], ROUNDING_TOL[self.logits_dtype]),
        )


@cache
def expected(setup: Setup) -> tuple[Tensor, Tensor, Tensor]:
    """The transcription's (mixed, d x, d logits) in float64 for ``setup``'s inputs."""
    x, index, logits, grad_out = setup.inputs()
    mixed = transcribed_blend(x, index, logits, *setup.options())
    return (mixed.detach(), *transcribed_grads(grad_out, x, index, logits, *setup.options()))


def assert_near(got: Tensor, want: Tensor, tol: float, what: str) -> None:
    got = got.detach().cpu().double()
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def same_layout(got: Tensor, want: Tensor) -> bool:
    """Equal strides wherever a dimension has more than one element (elsewhere strides mean nothing)."""
    return all(n <= 1 or a == b for n, a, b in zip(got.shape, got.stride(), want.stride(), strict=True))


def run_backend(backend: str, setup: Setup, x: Tensor, index: Tensor, logits: Tensor, grad_out: Tensor) -> None:
    """The public forward and the backend's backward op against the transcription, values and layouts."""
    want_mixed, want_grad_x, want_grad_logits = expected(setup)
    tol, tol_logits = setup.tolerances()
    options = setup.options()
    mixed = rmix_fast.blend_sources(
        x, index=index, logits=logits, scale=setup.scale, mode=setup.mode, normalize=setup.normalize, backend=backend
    )
    assert mixed.dtype == x.dtype and mixed.shape == x.shape and mixed.device == x.device
    assert same_layout(mixed, BLEND_SOURCES.spec.fake(x, index, logits, *options, True)), "mixed: not the fake's"
    assert_near(mixed, want_mixed, tol, f"{backend} mixed")

    grad_x, grad_logits = BLEND_SOURCES.backward[backend](grad_out, x, index, logits, *options)
    fake_x, fake_logits = BLEND_SOURCES.spec.backward_fake(grad_out, x, index, logits, *options)
    assert grad_x.dtype == x.dtype and grad_logits.dtype == logits.dtype
    assert same_layout(grad_x, fake_x) and same_layout(grad_logits, fake_logits), "gradients: not the fake's layout"
    assert_near(grad_x, want_grad_x, tol, f"{backend} d x")
    assert_near(grad_logits, want_grad_logits, tol_logits, f"{backend} d logits")


def on_device(*tensors: Tensor) -> tuple[Tensor, ...]:
    return tuple(t.to(DEVICE) for t in tensors)


# The Triton interpreter runs kernels as serial Python: its sweeps (and a float64 gradcheck, thousands of
# calls) belong to the slow tier; the quick tier keeps its dtype and layout cases.
INTERPRETED_SLOW = [
    pytest.param(b, marks=[pytest.mark.slow] * (b == "triton" and TRITON_INTERPRETED)) for b in BACKENDS
]
GRADCHECK_BACKENDS = INTERPRETED_SLOW
# Every backend's gradients are compared with the transcription's in every mode above; the float64 gradcheck
# covers each (mode, normalize) pair on the compiled and reference backends and one pair on the interpreter.
GRADCHECK_CASES = [
    pytest.param(backend.values[0], mode, normalize, marks=backend.marks)
    for backend in GRADCHECK_BACKENDS
    for mode in ("bilinear", "nearest")
    for normalize in ("softmax", "none")
    if backend.values[0] != "triton" or not TRITON_INTERPRETED or (mode, normalize) == ("bilinear", "softmax")
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_dtypes_and_layouts(backend, dtype, kind):
    """x, logits and the upstream gradient all in layout ``kind``; index int32 for half the dtypes, and a
    transposed (non-contiguous) view for the non-dense layouts."""
    setup = Setup(x_dtype=dtype, logits_dtype=dtype, seed=1)
    x, index, logits, grad_out = setup.inputs()
    if dtype in (torch.float16, torch.float64):
        index = index.to(torch.int32)
    if kind in ("strided", "transposed"):
        index = index.t().contiguous().t()
    x, logits, grad_out = (layout(t, kind) for t in on_device(x, logits, grad_out))
    run_backend(backend, setup, x, index.to(DEVICE), logits, grad_out)


# Odd low-resolution maps: 5 x 3 at scale 1, 3 x 5 at scale 4 (12 x 20 images), 1 x 2 at scale 16 (16 x 32).
MAPS = {1: (5, 3), 4: (3, 5), 16: (1, 2)}


@pytest.mark.parametrize("backend", INTERPRETED_SLOW)
@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("scale", sorted(MAPS))
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_sources_scales_modes_normalizations(backend, N, scale, mode, normalize):
    """Through autograd (the op's registration): gradients w.r.t. x and logits."""
    h, w = MAPS[scale]
    setup = Setup(N=N, h=h, w=w, scale=scale, mode=mode, normalize=normalize, seed=N + scale)
    x, index, logits, grad_out = on_device(*setup.inputs())
    x, logits = x.requires_grad_(True), logits.requires_grad_(True)
    mixed = rmix_fast.blend_sources(
        x, index=index, logits=logits, scale=scale, mode=mode, normalize=normalize, backend=backend
    )
    grad_x, grad_logits = torch.autograd.grad(mixed, (x, logits), grad_out)
    want_mixed, want_grad_x, want_grad_logits = expected(setup)
    tol, tol_logits = setup.tolerances()
    assert_near(mixed, want_mixed, tol, "mixed")
    assert_near(grad_x, want_grad_x, tol, "d x")
    assert_near(grad_logits, want_grad_logits, tol_logits, "d logits")


MIXED_DTYPES = [
    (torch.bfloat16, torch.float32),
    (torch.float32, torch.float64),
    (torch.float64, torch.float32),
    (torch.float16, torch.bfloat16),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("x_dtype", "logits_dtype"), MIXED_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_logits_in_another_dtype_than_x(backend, x_dtype, logits_dtype):
    setup = Setup(x_dtype=x_dtype, logits_dtype=logits_dtype, mode="nearest", seed=2)
    run_backend(backend, setup, *on_device(*setup.inputs()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_expanded_logits_and_index(backend):
    """Stride-0 batch and source dimensions: one weight map for every sample, one permutation for every row."""
    setup = Setup(seed=3)
    x, index, logits, grad_out = setup.inputs()
    logits, index = logits[:1].expand_as(logits), index[:1].expand_as(index)
    want = transcribed_blend(x, index, logits, *setup.options())
    want_grads = transcribed_grads(grad_out, x, index, logits, *setup.options())
    x, index, logits, grad_out = on_device(x, index, logits, grad_out)
    mixed = rmix_fast.blend_sources(x, index=index, logits=logits, scale=4, backend=backend)
    assert_near(mixed, want, 2e-6, "mixed")
    grads = BLEND_SOURCES.backward[backend](grad_out, x, index, logits, *setup.options())
    for got, wanted, what in zip(grads, want_grads, ("d x", "d logits"), strict=True):
        assert_near(got, wanted, 2e-6, what)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int32_and_int64_index_agree(backend):
    x, index, logits, _ = on_device(*Setup(seed=4).inputs())
    a = rmix_fast.blend_sources(x, index=index, logits=logits, scale=4, backend=backend)
    b = rmix_fast.blend_sources(x, index=index.to(torch.int32), logits=logits, scale=4, backend=backend)
    assert torch.equal(a, b)


@pytest.mark.parametrize(("backend", "mode", "normalize"), GRADCHECK_CASES)
def test_gradcheck_float64_x_and_logits(backend, mode, normalize):
    setup = Setup(
        B=2,
        C=1,
        N=2,
        h=2,
        w=1,
        scale=2,
        mode=mode,
        normalize=normalize,
        x_dtype=torch.float64,
        logits_dtype=torch.float64,
        seed=5,
    )
    x, index, logits, _ = on_device(*setup.inputs())

    def fn(x: Tensor, logits: Tensor) -> Tensor:
        return rmix_fast.blend_sources(
            x, index=index, logits=logits, scale=2, mode=mode, normalize=normalize, backend=backend
        )

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True), logits.requires_grad_(True)), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autograd_through_a_compiled_graph(backend):
    """aot_eager traces the op through its fakes and its autograd (the saved ints and strings included) and
    runs the backward op: gradients w.r.t. both inputs equal eager's."""
    torch._dynamo.reset()
    x, index, logits, _ = on_device(*Setup(seed=6).inputs())
    x = x.contiguous(memory_format=torch.channels_last)

    def step(x: Tensor, logits: Tensor) -> Tensor:
        mixed = rmix_fast.blend_sources(x, index=index, logits=logits, scale=4, mode="nearest", backend=backend)
        return (mixed * mixed).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (step, compiled):
        leaves = (x.detach().clone().requires_grad_(True), logits.detach().clone().requires_grad_(True))
        loss = fn(*leaves)
        results.append((loss, *torch.autograd.grad(loss, leaves)))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want)


# -- properties ------------------------------------------------------------------------------------------------


def _images(B: int, C: int, H: int, W: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(B, generator=g) for _ in range(3)])
    return torch.randn(B, C, H, W, generator=g).to(DEVICE), index.to(DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_constant_weights_are_the_linear_mix(backend, mode):
    """normalize="none" with logits constant lam_i per source: sum_i lam_i x[index_i] (AdAutoMix's x_lin)."""
    x, index = _images(4, 3, 8, 12, seed=7)
    lam = torch.tensor([0.2, 0.5, 0.3], device=DEVICE)
    logits = lam.view(1, 3, 1, 1).expand(4, 3, 2, 3).contiguous()
    mixed = rmix_fast.blend_sources(
        x, index=index, logits=logits, scale=4, mode=mode, normalize="none", backend=backend
    )
    xd = x.double().cpu()
    want = sum(float(lam[i]) * xd[index[i].cpu()] for i in range(3))
    assert_near(mixed, want, 2e-6, "linear mix")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_two_sources_with_equal_logits_are_mixup_at_one_half(backend, mode):
    """Equal logits (any value, varying over the map) give both sources the weight 0.5 exactly, so the mix is
    0.5 x[a] + 0.5 x[b] to the rounding of that one float32 sum; the reference's is that sum, bit for bit."""
    x, index = _images(4, 3, 8, 12, seed=8)
    index = index[:2]
    maps = torch.randn(4, 1, 2, 3, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    mixed = rmix_fast.blend_sources(x, index=index, logits=maps.expand(4, 2, 2, 3), scale=4, mode=mode, backend=backend)
    a, b = x[index[0]], x[index[1]]
    want = 0.5 * a + 0.5 * b
    if backend == "reference":
        assert torch.equal(mixed, want)
    bound = 2**-23 * (a.abs() + b.abs())  # one float32 rounding of the sum of the two halves, with room
    assert ((mixed - want).abs() <= bound).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dominant_logit_copies_its_source(backend):
    """+30 over the other logits gives its source a weight within e^-28 of 1: the mix is that source to 1e-6.
    Nearest: a random dominant source per low-resolution cell; bilinear: one per sample (between cells with
    different winners bilinear upsampling blends, by design)."""
    B, N, h, w, scale = 4, 3, 3, 2, 4
    x, index = _images(B, 3, h * scale, w * scale, seed=10)
    g = torch.Generator().manual_seed(11)
    noise = torch.rand(B, N, h, w, generator=g) * 2 - 1
    per_cell = torch.randint(N, (B, 1, h, w), generator=g)
    per_sample = torch.randint(N, (B, 1, 1, 1), generator=g).expand(B, 1, h, w)
    for mode, winner in (("nearest", per_cell), ("bilinear", per_sample)):
        logits = noise + 30 * torch.nn.functional.one_hot(winner[:, 0], N).permute(0, 3, 1, 2)
        mixed = rmix_fast.blend_sources(
            x, index=index, logits=logits.to(DEVICE), scale=scale, mode=mode, backend=backend
        )
        pixel_winner = winner.repeat_interleave(scale, 2).repeat_interleave(scale, 3).to(DEVICE)
        sources = torch.stack([x[index[i]] for i in range(N)])  # (N, B, C, H, W)
        want = sources.gather(0, pixel_winner[None].expand(1, *x.shape))[0]
        torch.testing.assert_close(mixed, want, rtol=0, atol=1e-6, msg=lambda m, mode=mode: f"{mode}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_softmax_weights_sum_to_one(backend, mode):
    """Images of ones mix to the sum of the weights: 1 at every pixel."""
    B, N = 3, 3
    index = torch.stack([torch.randperm(B, generator=torch.Generator().manual_seed(i)) for i in range(N)])
    logits = 3 * torch.randn(B, N, 3, 5, generator=torch.Generator().manual_seed(12))
    x = torch.ones(B, 1, 12, 20, device=DEVICE)
    mixed = rmix_fast.blend_sources(
        x, index=index.to(DEVICE), logits=logits.to(DEVICE), scale=4, mode=mode, backend=backend
    )
    torch.testing.assert_close(mixed, torch.ones_like(mixed), rtol=0, atol=1e-6)


# -- bad input and B = 0 ---------------------------------------------------------------------------------------


def _good() -> dict:
    x, index, logits, _ = on_device(*Setup(B=4, seed=13).inputs())  # x (4, 2, 8, 12), index (3, 4), logits 2 x 3
    return {"x": x, "index": index, "logits": logits, "scale": 4, "mode": "bilinear", "normalize": "softmax"}


# (argument, its bad value from the good arguments, error, message)
BAD = [
    ("index", lambda kw: kw["index"].tolist(), TypeError, "index must be an integer torch.Tensor"),
    ("index", lambda kw: kw["index"].float(), TypeError, "index must be an integer tensor, got dtype torch.float32"),
    ("index", lambda kw: kw["index"].bool(), TypeError, "index must be an integer tensor"),
    ("index", lambda kw: kw["index"][0], ValueError, r"index must have shape \(N, 4\) with N >= 1.*got shape \(4,\)"),
    ("index", lambda kw: kw["index"][:0], ValueError, r"index must have shape \(N, 4\).*got shape \(0, 4\)"),
    ("index", lambda kw: kw["index"][:, :3], ValueError, r"index must have shape \(N, 4\).*got shape \(3, 3\)"),
    ("index", lambda kw: kw["index"].to("meta"), ValueError, "index is on meta but x is on"),
    ("logits", lambda kw: kw["logits"].tolist(), TypeError, "logits must be a torch.Tensor"),
    ("logits", lambda kw: kw["logits"].int(), TypeError, "logits must be float16, bfloat16, float32 or float64"),
    (
        "logits",
        lambda kw: kw["logits"][:, :2],
        ValueError,
        r"logits must have shape \(B, N, h, w\) = \(4, 3, H / scale, W / scale\).*got shape \(4, 2, 2, 3\)",
    ),
    ("logits", lambda kw: kw["logits"][:3], ValueError, r"logits must have shape .*got shape \(3, 3, 2, 3\)"),
    ("logits", lambda kw: kw["logits"][..., :2], ValueError, r"scale=4, got shape \(4, 3, 2, 2\)"),
    ("logits", lambda kw: kw["logits"][0], ValueError, r"logits must have shape .*got shape \(3, 2, 3\)"),
    ("logits", lambda kw: kw["logits"].to("meta"), ValueError, "logits is on meta but x is on"),
    ("scale", lambda kw: 2, ValueError, r"logits must have shape .*and scale=2, got shape \(4, 3, 2, 3\)"),
    ("scale", lambda kw: 0, ValueError, "scale must be >= 1, got 0"),
    ("scale", lambda kw: 4.0, TypeError, "scale must be an int, got float 4.0"),
    ("scale", lambda kw: True, TypeError, "scale must be an int, got bool True"),
    ("mode", lambda kw: "bicubic", ValueError, r"mode must be one of \('bilinear', 'nearest'\), got 'bicubic'"),
    ("mode", lambda kw: 1, TypeError, "mode must be a str"),
    ("normalize", lambda kw: "sigmoid", ValueError, r"normalize must be one of \('softmax', 'none'\)"),
    ("normalize", lambda kw: True, TypeError, "normalize must be a str"),
    ("normalize", lambda kw: None, TypeError, "normalize must be a str"),
    ("x", lambda kw: kw["x"][0], ValueError, r"x must be 4-D"),
    ("x", lambda kw: kw["x"].long(), TypeError, "x must be float16, bfloat16, float32 or float64"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("arg", "make", "error", "match"), BAD, ids=[m for *_, m in BAD])
def test_bad_arguments(backend, arg, make, error, match):
    kwargs = _good()
    kwargs[arg] = make(kwargs)
    with pytest.raises(error, match=match):
        rmix_fast.blend_sources(**kwargs, backend=backend)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        rmix_fast.blend_sources(**_good(), backend="cuda")


def _repeat_in_row_1(kw: dict) -> dict:
    index = kw["index"].clone()
    index[1, 0] = index[1, 1]
    return {**kw, "index": index}


def _out_of_range(kw: dict) -> dict:
    index = kw["index"].clone()
    index[2, 3] = 4
    return {**kw, "index": index}


def _non_finite(value: float):
    def change(kw: dict) -> dict:
        logits = kw["logits"].clone()
        logits[1, 2, 1, 0] = value
        return {**kw, "logits": logits}

    return change


CONTENT = [
    (_repeat_in_row_1, r"index row 1 must be a permutation of 0\.\.3"),
    (_out_of_range, r"index must hold indices in \[0, 3\], got values in \[0, 4\]"),
    (_non_finite(float("nan")), "logits must be finite"),
    (_non_finite(float("-inf")), "logits must be finite"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("change", "match"), CONTENT, ids=[m for _, m in CONTENT])
def test_content_checks_only_with_validate(backend, change, match):
    kw = change(_good())
    with pytest.raises(ValueError, match=match):
        rmix_fast.blend_sources(**kw, backend=backend)
    if change is not _out_of_range:  # an index out of range without validation reads out of bounds
        rmix_fast.blend_sources(**kw, backend=backend, validate=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x = torch.randn(0, 2, 8, 12, device=DEVICE, requires_grad=True)
    logits = torch.randn(0, 3, 2, 3, device=DEVICE, requires_grad=True)
    index = torch.empty(3, 0, dtype=torch.int64, device=DEVICE)
    mixed = rmix_fast.blend_sources(x, index=index, logits=logits, scale=4, backend=backend)
    assert mixed.shape == x.shape and mixed.dtype == x.dtype
    grad_x, grad_logits = torch.autograd.grad(mixed.sum(), (x, logits))
    assert grad_x.shape == x.shape and grad_logits.shape == logits.shape
