"""``MaskGenerator`` against a literal float64 transcription of the published ``AdaptiveMask.forward``
(tests/helpers/adautomix_transcription.py): the logits, the masks after upsample + softmax, the mix and its
gradient through ``blend_sources``, BatchNorm in both modes, the inf clamp, and the argument errors."""

from __future__ import annotations

import pytest
import torch

from rmix_fast import blend_sources
from rmix_fast.adautomix import MaskGenerator
from tests.helpers.adautomix_transcription import explicit_mix, from_generator, parameters

C = 6  # feature channels: d = 3 query/key channels
SCALE = 4


def make_generator(
    *, lam_concat: bool, norm: str | None, dtype: torch.dtype = torch.float64, seed: int = 0
) -> MaskGenerator:
    # std 0.4, not the published 0.01: with 0.01 the attention is uniform to ~1e-4 and would hide mistakes.
    gen = MaskGenerator(
        C, lam_concat=lam_concat, norm=norm, std=0.4, generator=torch.Generator().manual_seed(seed), dtype=dtype
    )
    if norm is not None:  # non-trivial affine and running statistics, so eval mode tests something
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for block in (gen.conv_q, gen.conv_k):
                block.bn.weight.copy_(1 + 0.3 * torch.randn(block.bn.weight.shape, generator=g))
                block.bn.bias.copy_(0.2 * torch.randn(block.bn.bias.shape, generator=g))
                block.bn.running_mean.copy_(0.1 * torch.randn(block.bn.running_mean.shape, generator=g))
                block.bn.running_var.copy_(0.5 + torch.rand(block.bn.running_var.shape, generator=g))
    return gen


def make_inputs(B: int, N: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, C, h, w, generator=g, dtype=torch.float64)
    # source 0 the identity (the published two-source call: [feature, feature[index]]), the others random
    rows = [torch.arange(B)] + [torch.randperm(B, generator=g) for _ in range(N - 1)]
    raw = torch.rand(N, generator=g, dtype=torch.float64) + 0.1
    lam = (raw / raw.sum()).tolist()
    return features, torch.stack(rows), lam


def published_lam(lam: list[float]) -> float | list[float]:
    """The published call's lam: a float for two sources (the code appends lam and 1 - lam), else the list."""
    return lam[0] if len(lam) == 2 else lam


def ours_lam(lam: list[float]) -> list[float]:
    return [lam[0], 1 - lam[0]] if len(lam) == 2 else lam


def transcribed(gen: MaskGenerator, features, index, lam, **kw):
    t = from_generator(gen, **kw)
    f = features.to(t.dtype)
    return t, t.mask_logits([f[index[i]] for i in range(index.shape[0])], published_lam(lam))


CASES = [(N, lam_concat, norm) for N in (2, 3) for lam_concat in (False, True) for norm in (None, "bn")]


@pytest.mark.parametrize(("N", "lam_concat", "norm"), CASES)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize(("B", "hw"), [(1, 5), (4, 3)])
def test_logits_and_masks_match_the_transcription(N, lam_concat, norm, dtype, tol, B, hw):
    gen = make_generator(lam_concat=lam_concat, norm=norm, dtype=dtype).eval()
    features, index, lam = make_inputs(B, N, hw, hw)
    logits = gen(features.to(dtype), index, ours_lam(lam))
    assert logits.shape == (B, N, hw, hw) and logits.dtype == dtype
    _, expected = transcribed(gen, features, index, lam)  # float64, the module's weights as they are
    torch.testing.assert_close(logits.double(), expected, rtol=tol, atol=tol)
    assert expected.abs().max() > 0.1  # not a vacuous comparison
    for mode in ("bilinear", "nearest"):  # nearest: replication here, F.interpolate there; equal at scale 4
        masks = MaskGenerator.masks(logits, SCALE, mode)
        expected_masks = torch.nn.functional.interpolate(expected, scale_factor=SCALE, mode=mode).softmax(dim=1)
        torch.testing.assert_close(masks.double(), expected_masks, rtol=tol, atol=tol)


@pytest.mark.parametrize("N", [2, 3])
def test_batchnorm_training_mode_per_source_statistics_and_running_updates(N):
    gen = make_generator(lam_concat=True, norm="bn").train()
    features, index, lam = make_inputs(3, N, 5, 5)
    t, expected = transcribed(gen, features, index, lam)  # copies the running stats before our forward
    logits = gen(features, index, ours_lam(lam))
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    for ours, theirs in ((gen.conv_q, t.conv_q), (gen.conv_k, t.conv_k)):
        assert theirs.calls == N  # one BatchNorm call per source, as the published module makes
        torch.testing.assert_close(ours.bn.running_mean, theirs.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.bn.running_var, theirs.running_var, rtol=1e-12, atol=1e-12)
        assert int(ours.bn.num_batches_tracked) == N


@pytest.mark.parametrize(
    ("N", "lam_concat", "norm", "training"), [(2, True, None, False), (3, False, "bn", False), (3, True, "bn", True)]
)
def test_parameter_gradients_through_blend_sources_match_the_transcription(N, lam_concat, norm, training):
    gen = make_generator(lam_concat=lam_concat, norm=norm).train(training)
    features, index, lam = make_inputs(3, N, 3, 3, seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 3 * SCALE, 3 * SCALE, generator=g, dtype=torch.float64)
    weight = torch.randn(x.shape, generator=g, dtype=torch.float64)

    t = from_generator(gen, requires_grad=True)
    f = features
    masks = t.forward([f[index[i]] for i in range(N)], published_lam(lam), SCALE, "bilinear")
    (explicit_mix(x, index, masks) * weight).sum().backward()
    expected = {name: p.grad for name, p in parameters(t).items()}

    mixed = blend_sources(x, index=index, logits=gen(features, index, ours_lam(lam)), scale=SCALE, backend="reference")
    (mixed * weight).sum().backward()
    ours = {name: p.grad for name, p in gen.named_parameters()}
    assert ours.keys() == expected.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)
        # conv_v's bias shifts every source's logits alike, which the softmax over sources ignores: its
        # gradient is 0 up to rounding (in the published module too). Every other one is not vacuous.
        assert (ours[name].abs().max() < 1e-12) == (name == "conv_v.bias"), name


def test_non_square_maps():
    """The published code names (b, c, w, h) = size() and views its map as (b, 1, h, w): only square maps
    run there. Here any h x w: equal to the transcription with (h, w) taken in their true order."""
    gen = make_generator(lam_concat=True, norm=None)
    features, index, lam = make_inputs(2, 3, 3, 5)
    _, expected = transcribed(gen, features, index, lam, hw_as_coded=False)
    torch.testing.assert_close(gen(features, index, ours_lam(lam)), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError):  # the published naming: its lam channel has shape (b, 1, 5, 3)
        transcribed(gen, features, index, lam)


def test_inf_attention_is_clamped_as_published():
    """Features large enough that q k^T overflows float32: the published code clamps the whole map to
    +-1e25 before the scale and softmax (no NaN); so does the module, without a host sync."""
    gen = make_generator(lam_concat=False, norm=None, dtype=torch.float32)
    features, index, lam = make_inputs(2, 2, 3, 3)
    features = (features * 1e20).float()
    t = from_generator(gen, dtype=torch.float32)
    expected = t.mask_logits([features[index[i]] for i in range(2)], lam[0])
    assert t.overflow >= 1 and not t.nan_replaced  # the clamp fired, the NaN replacement did not
    logits = gen(features, index)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=0.0)


def test_one_source_and_the_unused_lam():
    """N = 1 (no branch in the published code): the sum over no other source is 0, the attention uniform,
    the logits the mean value map, the masks 1. Without lam_concat a given lam is only checked."""
    gen = make_generator(lam_concat=False, norm=None)
    features, index, _ = make_inputs(2, 1, 3, 3)
    logits = gen(features, index, [1.0])
    v = gen.conv_v(features).flatten(1).mean(dim=1)
    torch.testing.assert_close(logits, v[:, None, None, None].expand(2, 1, 3, 3), rtol=1e-12, atol=1e-12)
    assert torch.equal(MaskGenerator.masks(logits, 2), torch.ones(2, 1, 6, 6, dtype=torch.float64))


def test_exclusive_key_sums_survive_a_dominant_source():
    """Sample 0 (source 0) with features 1e5 times sample 1's (sources 1 and 2), its queries scaled back to
    O(1): source 0's attention reads k_1 + k_2 only, which K_sum - k_0 loses to rounding in float32 (it is
    off by 2.9e-4 of the map's scale here); the module's prefix/suffix sums stay at float32 rounding."""
    gen = make_generator(lam_concat=False, norm=None, dtype=torch.float32)
    with torch.no_grad():
        gen.conv_q.conv.weight.mul_(1e-5)
    features, _, lam = make_inputs(2, 3, 3, 3)
    features[0] *= 1e5
    index = torch.tensor([[0, 0], [1, 1], [1, 1]])
    _, expected = transcribed(gen, features, index, lam)
    error = (gen(features.float(), index).double() - expected).abs() / expected.abs().amax(dim=(2, 3), keepdim=True)
    assert error.max() < 1e-6


def test_init_is_reproducible_from_a_generator():
    a = MaskGenerator(C, norm="bn", generator=torch.Generator().manual_seed(3))
    b = MaskGenerator(C, norm="bn", generator=torch.Generator().manual_seed(3))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    w = a.conv_q.conv.weight
    assert a.conv_q.conv.bias is None and a.conv_v.bias is not None and not a.conv_v.bias.any()
    assert 0.005 < float(w.detach().std()) < 0.02  # N(0, 0.01)
    assert torch.equal(a.conv_q.bn.weight, torch.ones(3)) and not a.conv_q.bn.bias.any()
    c = MaskGenerator(C, generator=torch.Generator().manual_seed(3))
    assert c.conv_q.conv.bias is not None and not c.conv_q.conv.bias.any()  # mmcv's bias='auto': no norm, a bias


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda g, f, i: g(f, i[:0]), "index"),  # N = 0 sources
        (lambda g, f, i: g(f[0], i), "features"),  # not 4-D
        (lambda g, f, i: g(f[:, :4], i), "features"),  # wrong channel count
        (lambda g, f, i: g(f, i[:, :2]), "index"),  # batch mismatch
        (lambda g, f, i: g(f, i[0]), "index"),  # not (N, B)
        (lambda g, f, i: g(f, i, [0.5, 0.5]), "lam"),  # 2 values for 3 sources
        (lambda g, f, i: g(f, i, torch.ones(2)), "lam"),
        (lambda g, f, i: g(f, i), "lam"),  # missing with lam_concat
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(call, name):
    gen = make_generator(lam_concat=True, norm=None)
    features, index, _ = make_inputs(3, 3, 3, 3)
    with pytest.raises(ValueError, match=name):
        call(gen, features, index)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"norm": "gn"}, "norm"),
        ({"init": "xavier"}, "init"),
        ({"std": 0.0}, "std"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MaskGenerator(**{"in_channels": C, **kwargs})


def test_parameter_gradients_are_bit_identical_run_to_run():
    # every sample is a source N times: its gradient must be summed in a fixed order (no accumulating scatter)
    # 128 channels (small_cnn's): enough elements for the threads to split an accumulating scatter
    gen = MaskGenerator(128, std=0.4, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    features = torch.randn(64, 128, 4, 4, generator=g)
    index = torch.stack([torch.randperm(64, generator=g) for _ in range(3)])
    weights = torch.randn(64, 3, 4, 4, generator=g)
    grads = []
    for _ in range(12):
        gen.zero_grad(set_to_none=True)
        (gen(features, index) * weights).sum().backward()
        grads.append([p.grad.clone() for p in gen.parameters()])
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other, strict=True))
