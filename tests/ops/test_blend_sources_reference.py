"""The reference of the multi-source blend (``rmix_fast.reference.blend_sources``) against the float64
transcription of its definition (``tests/helpers/blend_sources_transcription.py``): forward and both
gradients, every mode and normalisation, N in {1, 2, 3}, scales 1 to 4 on odd, non-square maps; nearest at
scales where ``F.interpolate`` lands a pixel early; a backward that runs where autograd records nothing (inside
the op). Its outputs' layouts (the op's fakes') are checked with every backend's in ``test_blend_sources.py``."""

from __future__ import annotations

import pytest
import torch

from rmix_fast import reference
from tests.helpers.blend_sources_transcription import transcribed_blend, transcribed_grads, transcribed_weights


def _inputs(B: int, N: int, C: int, h: int, w: int, scale: int, seed: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, h * scale, w * scale, generator=g).to(dtype)
    index = torch.stack([torch.randperm(B, generator=g) for _ in range(N)])
    logits = (2 * torch.randn(B, N, h, w, generator=g)).to(dtype)
    return x, index, logits


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize(("N", "scale"), [(1, 2), (2, 3), (3, 1), (3, 4)])
def test_reference_matches_the_transcription(mode, normalize, N, scale):
    x, index, logits = _inputs(B=3, N=N, C=2, h=3, w=5, scale=scale, seed=10 * N + scale)
    mixed = reference.blend_sources_forward(x, index, logits, scale, mode, normalize)
    want = transcribed_blend(x, index, logits, scale, mode, normalize)
    torch.testing.assert_close(mixed, want, rtol=1e-12, atol=1e-12)

    grad_out = torch.randn(mixed.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grad_x, grad_logits = reference.blend_sources_backward(grad_out, x, index, logits, scale, mode, normalize)
    want_x, want_logits = transcribed_grads(grad_out, x, index, logits, scale, mode, normalize)
    torch.testing.assert_close(grad_x, want_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_logits, want_logits, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [41, 47])
def test_nearest_is_floor_of_dst_over_scale_at_any_scale(scale):
    """F.interpolate(mode="nearest") multiplies by a float32 1 / scale and reads the previous source pixel
    where that rounds down (first at scale 41); the reference replicates pixels instead."""
    logits = torch.tensor([[[[0.0], [1.0]]]])  # (1, 1, 2, 1) float32: the edge at row `scale`
    got = reference.blend_sources_weights(logits, scale, "nearest", "none")
    torch.testing.assert_close(got.double(), transcribed_weights(logits, scale, "nearest", "none"), rtol=0, atol=0)
    assert got[0, 0, scale, 0] == 1.0  # row `scale` is the second source row's


def test_softmax_weights_sum_to_one_per_pixel():
    _, _, logits = _inputs(B=2, N=3, C=1, h=3, w=5, scale=4, seed=2, dtype=torch.float32)
    for mode in ("bilinear", "nearest"):
        total = reference.blend_sources_weights(logits, 4, mode, "softmax").sum(dim=1)
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=4e-7)


def test_backward_runs_where_autograd_records_nothing():
    """A custom op's implementation runs below the autograd dispatch keys (``torch.enable_grad`` cannot bring
    autograd back there), so the backward must not lean on autograd."""
    x, index, logits = _inputs(B=2, N=2, C=1, h=2, w=2, scale=2, seed=3)
    grad_out = torch.ones_like(x)
    want = reference.blend_sources_backward(grad_out, x, index, logits, 2, "bilinear", "softmax")
    with torch._C._AutoDispatchBelowAutograd():
        got = reference.blend_sources_backward(grad_out, x, index, logits, 2, "bilinear", "softmax")
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
