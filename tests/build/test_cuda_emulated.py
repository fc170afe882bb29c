"""The CUDA blend kernels (``csrc/cuda/blend_regions_kernel.cu``), built for the host by
``helpers/cuda_emulation``, against the reference: every dtype, dense and strided layouts, both index widths,
cells narrower than a vector, rows that are no whole number of vectors, odd and non-square images, codes other
than 0 / 1 / 2. No GPU needed: this runs the kernels' own source, their threads one after another, so it checks
index math, path choice and selects, not timing or races (the blend's threads never share data).
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from rmix_fast.reference.blend_regions import blend_regions_backward, blend_regions_forward
from tests.helpers import cuda_emulation

ACCUMULATE = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float32}
ACCUMULATE[torch.float64] = torch.float64
DTYPES = list(ACCUMULATE)
LAYOUTS = ["contiguous", "channels_last", "misaligned", "sliced", "transposed", "batch_inner", "expanded"]
SHAPES = [  # (B, C, H, W, gh, gw)
    (4, 3, 8, 8, 2, 2),
    (4, 3, 8, 8, 8, 8),  # a cell per pixel: a vector spans cells
    (3, 3, 16, 24, 4, 3),
    (5, 2, 2, 6, 1, 3),  # rows of 6 elements: vectors span rows
    (5, 2, 2, 6, 2, 6),
    (2, 3, 64, 64, 4, 4),  # several tiles per sample
    (2, 3, 64, 64, 64, 64),
    (3, 1, 7, 9, 7, 9),
    (3, 5, 6, 10, 3, 5),
    (1, 3, 4, 4, 1, 1),
    (6, 4, 12, 16, 3, 16),
    (7, 3, 5, 5, 5, 1),
    (2, 3, 30, 40, 5, 8),
    (3, 16, 8, 8, 2, 8),
    (3, 1, 1, 1, 1, 1),
    (2, 6, 10, 12, 2, 4),
]
VECTOR_KERNELS = {"blend_vector_kernel<scalar_t, acc_t, I>", "blend_backward_vector_kernel<scalar_t, acc_t, I>"}


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    return cuda_emulation.build(tmp_path_factory.mktemp("cuda_emulation"))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _assert_same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Bit-identical, except that any NaN equals any NaN: torch's float -> bfloat16 conversion (the reference's
    last step) writes NaN as 0xFFFF where c10's scalar conversion (the kernel's) writes 0x7FC0."""
    assert got.shape == want.shape and got.stride() == torch.empty_like(want).stride(), what
    same = (_bits(got) == _bits(want)) | (torch.isnan(got) & torch.isnan(want)).contiguous()
    assert bool(same.all()), f"{what}: {int((~same).sum())} elements differ, first at {(~same).nonzero()[0].tolist()}"


def _image(B, C, H, W, dtype, layout, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    flat = x.view(-1)
    flat[::17], flat[5::23], flat[3::29] = float("inf"), float("nan"), -0.0  # a copy passes them through
    if layout == "contiguous":
        return x
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "misaligned":  # contiguous, but a storage offset of one element: no 16-byte vectors
        storage = torch.empty(x.numel() + 1, dtype=dtype)
        storage[1:] = flat
        return storage[1:].view(B, C, H, W)
    if layout == "sliced":
        wide = torch.zeros(B, C, H, W + 3, dtype=dtype)
        wide[..., :W] = x
        return wide[..., :W]
    if layout == "transposed":  # dense, neither NCHW nor NHWC; empty_like keeps its strides
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "batch_inner":
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "expanded":  # a gradient of a sum over the batch
        return x[:1].expand(B, C, H, W)
    raise ValueError(layout)


def _vectorised(t: torch.Tensor) -> bool:
    """The vector path's condition (csrc/README.md, "The CUDA blend"), for t and its empty_like output."""
    dense = t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)
    per_sample = t.shape[1] * t.shape[2] * t.shape[3]
    return dense and t.data_ptr() % 16 == 0 and per_sample % (16 // t.element_size()) == 0


@pytest.mark.parametrize("index64", [False, True], ids=["index32", "index64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_emulated_blend_matches_reference(emulated, dtype, layout, index64):
    emulated.launches()  # drop what earlier tests launched
    emulated.force_index64(index64)
    rng = random.Random(f"{dtype}{layout}")
    try:
        for seed, (B, C, H, W, gh, gw) in enumerate(SHAPES):
            what = f"{(B, C, H, W)} on a {gh}x{gw} grid"
            x = _image(B, C, H, W, dtype, layout, seed)
            regions = torch.tensor(rng.choices([0, 1, 2, 3, 255], k=B * gh * gw), dtype=torch.uint8)
            regions = regions.view(B, gh, gw)
            perm = torch.randperm(B, generator=torch.Generator().manual_seed(seed))
            lam = torch.rand(B, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            lam[0] = 0.5
            lam[1:3] = torch.tensor([0.0, 1.0])[: max(0, min(2, B - 1))]
            lam_acc = lam.to(ACCUMULATE[dtype])

            mixed, _ = emulated.blend(x, regions, perm, lam_acc, lam)
            launched = set(emulated.launches())
            _assert_same(mixed, blend_regions_forward(x, regions, perm, lam)[0], f"forward, {what}")
            grad_out = _image(B, C, H, W, dtype, layout, seed + 100)
            grad_x = emulated.blend_backward(grad_out, regions, perm, lam_acc)
            launched |= set(emulated.launches())
            _assert_same(grad_x, blend_regions_backward(grad_out, regions, perm, lam), f"backward, {what}")

            vector = launched & VECTOR_KERNELS
            if _vectorised(x):
                assert vector == VECTOR_KERNELS, f"{what}: dense and aligned, but ran {sorted(launched)}"
            else:
                assert not vector, f"{what}: ran {sorted(vector)} on a tensor the vector path cannot take"
    finally:
        emulated.force_index64(False)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize(
    ("dtype", "signalling_nan"),
    [
        (torch.float32, 0x7F800001),
        (torch.float64, 0x7FF0000000000001),
        (torch.float16, 0x7C01),
        (torch.bfloat16, 0x7F81),
    ],
    ids=["float32", "float64", "float16", "bfloat16"],
)
def test_emulated_copies_are_bit_exact(emulated, dtype, signalling_nan, layout):
    """A copied cell is the stored bits, signalling NaN payloads included: selected, never converted."""
    x = _image(4, 3, 8, 8, dtype, "contiguous", 0)
    bits = _bits(x).clone()
    bits.view(-1)[::7] = signalling_nan
    x = _image(4, 3, 8, 8, dtype, layout, 0).copy_(bits.view(dtype))  # keeps the layout's strides
    assert (_bits(x) == signalling_nan).any()
    regions = torch.randint(1, 3, (4, 2, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    perm = torch.tensor([2, 0, 3, 1])
    mixed, _ = emulated.blend(x, regions, perm, torch.rand(4).to(ACCUMULATE[dtype]), torch.rand(4, dtype=torch.float64))
    own = (regions == 1).repeat_interleave(4, 1).repeat_interleave(2, 2).unsqueeze(1)
    assert torch.equal(_bits(mixed), torch.where(own, _bits(x), _bits(x)[perm]))


def test_emulated_bad_perm_stays_in_bounds(emulated):
    """validate=False lets a perm that is no permutation through: an entry outside [0, B) stands for the sample
    itself, and the backward's inverse of a perm with repeats holds only valid sample indices."""
    x = torch.randn(5, 3, 8, 8)
    regions = torch.randint(0, 3, (5, 2, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    lam = torch.rand(5, dtype=torch.float64)
    mixed, _ = emulated.blend(x, regions, torch.tensor([7, -1, 2, 2, 4]), lam.float(), lam)
    expected, _ = blend_regions_forward(x, regions, torch.tensor([0, 1, 2, 2, 4]), lam)
    _assert_same(mixed, expected, "forward with a bad perm")
    assert torch.isfinite(emulated.blend_backward(x, regions, torch.tensor([7, -1, 2, 2, 4]), lam.float())).all()


def test_emulated_launch_folds_the_batch_into_the_grid(emulated):
    """One-cell images, many samples: every sample is its own tile on a 1-D grid (no 65535 cap on B)."""
    B = 70_000
    x = torch.randn(B, 1, 2, 2)
    regions = torch.randint(0, 3, (B, 1, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(3))
    lam = torch.rand(B, dtype=torch.float64)
    mixed, _ = emulated.blend(x, regions, perm, lam.float(), lam)
    assert "blend_vector_kernel<scalar_t, acc_t, I>" in emulated.launches()
    _assert_same(mixed, blend_regions_forward(x, regions, perm, lam)[0], f"B={B}")


def test_emulation_covers_every_blend_path(emulated):
    """The cases above reach every kernel of the engine but lam_eff's (whose barriers are stubs here)."""
    emulated.launches()
    for layout, index64 in itertools.product(["contiguous", "sliced"], [False, True]):
        emulated.force_index64(index64)
        x = _image(2, 3, 8, 8, torch.float32, layout, 0)
        regions = torch.zeros(2, 1, 1, dtype=torch.uint8)
        emulated.blend(x, regions, torch.tensor([1, 0]), torch.rand(2), torch.rand(2, dtype=torch.float64))
        emulated.blend_backward(x, regions, torch.tensor([1, 0]), torch.rand(2))
    emulated.force_index64(False)
    assert set(emulated.launches()) == {
        "lam_eff_kernel<double>",
        "inverse_perm_kernel",
        "blend_vector_kernel<scalar_t, acc_t, I>",
        "blend_strided_kernel<scalar_t, acc_t, I>",
        "blend_backward_vector_kernel<scalar_t, acc_t, I>",
        "blend_backward_strided_kernel<scalar_t, acc_t, I>",
    }
