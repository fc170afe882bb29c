"""``AmortisedRMix``: R-Mix from a per-sample saliency store. A sample seen for the first time makes the batch
take the fresh pass (the same draws and mix as ``RMix``); a batch of stored samples mixes as ``RMix`` would with
the gradient its maps came from; the gradient the training backward routes to the un-mixed batch equals
``torch.autograd.grad`` of the mixed loss (float64), and the stored map is its definition; the state round trip
is exact; bad input gets clear errors."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

import rmix_fast
from rmix_fast import AmortisedRMix
from rmix_fast.mixers.amortised_rmix import pool_cells
from rmix_fast.saliency_store import cell_map_from_gradient
from tests.helpers.toy_task import ToyCNN
from tests.test_saliency_store import cell_map_by_definition

K = 4  # ToyCNN's classes
N = 20  # dataset size


def _batch(seed: int, B: int = 6, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, 16, 16, generator=g, dtype=dtype), torch.randint(K, (B,), generator=g)


def _mixer(seed: int = 0, **kwargs) -> AmortisedRMix:
    return AmortisedRMix(K, generator=torch.Generator().manual_seed(seed), num_samples=N, **kwargs)


def _step(model, mixer, x, y, idx, *, fresh: bool | None = None):
    """One step as rmix-train runs it: the pass only when the mixer asks for it, the mix, backward, store."""
    need = mixer.needs_grad_for(idx)
    assert fresh is None or need == fresh
    grad = rmix_fast.input_gradient(model, x, y) if need else None
    x_mix, y_soft = mixer(x, y, grad, indices=idx)
    loss = rmix_fast.SoftTargetCrossEntropy()(model(x_mix), y_soft)
    loss.backward()
    mixer.after_backward()
    return x_mix, y_soft, loss


def _routed_gradient(model, x, y_soft, params) -> torch.Tensor:
    """d mixed loss / d x by autograd, the mix replayed through the blend engine from the drawn parameters."""
    xr = x.clone().requires_grad_(True)
    mixed, _ = rmix_fast.blend_regions(xr, perm=params.perm, lam=params.lam, regions=params.region_map())
    (grad,) = torch.autograd.grad(rmix_fast.SoftTargetCrossEntropy()(model(mixed), y_soft), xr)
    return grad


def test_a_new_sample_takes_the_fresh_pass_with_rmix_s_draws_and_mix():
    x, y = _batch(0)
    idx = torch.tensor([3, 0, 19, 7, 8, 11])
    mixer, plain = _mixer(1), rmix_fast.RMix(K, generator=torch.Generator().manual_seed(1))
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    assert mixer.needs_grad_for(idx)
    got, want = mixer(x, y, grad, indices=idx), plain(x, y, grad)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[0].requires_grad and not want[0].requires_grad  # the backward reaches the un-mixed batch
    for name in ("perm", "lam", "q", "mask"):
        assert torch.equal(getattr(mixer.last_params, name), getattr(plain.last_params, name)), name
    with pytest.raises(ValueError, match=r"needs grad for this batch: 6 of its samples \(e\.g\. index 3\)"):
        mixer(x, y, indices=idx)


def test_a_sample_is_stored_after_its_step_and_only_then_skips_the_pass():
    model = ToyCNN(K)
    mixer = _mixer()
    x, y = _batch(3)
    first = torch.tensor([0, 1, 2, 3, 4, 5])
    _step(model, mixer, x, y, first, fresh=True)
    assert mixer.store.seen.nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert not mixer.needs_grad_for(torch.tensor([5, 0, 2]))
    assert mixer.needs_grad_for(torch.tensor([5, 0, 6]))  # one unseen sample: the whole batch runs fresh
    _step(model, mixer, x, y, torch.tensor([5, 4, 3, 2, 1, 0]), fresh=False)
    _step(model, mixer, x, y, torch.tensor([5, 4, 3, 2, 1, 6]), fresh=True)
    assert mixer.epoch_stats() == {"amortised_share": 1 / 3}
    assert mixer.epoch_stats() == {}  # the counts restart every epoch


@pytest.mark.parametrize("applied", [True, False], ids=["mixed", "passed_through"])
def test_the_routed_gradient_is_autograd_s_and_the_stored_map_its_definition(applied):
    """float64 throughout (store included): after a fresh step and after a stored one, each sample's stored map
    is cell_map_by_definition of torch.autograd.grad(mixed loss, un-mixed batch)."""
    torch.manual_seed(0)
    model = ToyCNN(K).double()
    mixer = _mixer(4, store_dtype=torch.float64, prob=1.0 if applied else 0.0)
    x, y = _batch(5, dtype=torch.float64)
    idx = torch.tensor([9, 2, 14, 0, 7, 13])
    for fresh in (True, False):
        before = mixer.store.maps.clone()
        _, y_soft, _ = _step(model, mixer, x, y, idx, fresh=fresh or not applied)
        params = mixer.last_params
        if applied:
            want = _routed_gradient(model, x, y_soft, params)
        else:  # passed through: the gradient of the clean loss
            xr = x.clone().requires_grad_(True)
            (want,) = torch.autograd.grad(rmix_fast.SoftTargetCrossEntropy()(model(xr), y_soft), xr)
        stored = mixer.store.maps[idx]  # float64 (lookup hands back float32)
        assert mixer.store.seen[idx].all()
        torch.testing.assert_close(stored, cell_map_by_definition(want, mixer.store_grid), rtol=1e-10, atol=0)
        others = torch.ones(N, dtype=torch.bool)
        others[idx] = False
        assert torch.equal(mixer.store.maps[others], before[others]), "a sample outside the batch changed"
        if not applied:
            break


def test_a_stored_batch_mixes_as_rmix_with_the_gradient_its_maps_came_from():
    """Maps stored from a gradient (float64 store), pooled to each drawn p, give RMix's mask and mix for it."""
    x, y = _batch(6, B=8)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    idx = torch.tensor([19, 3, 4, 10, 0, 12, 1, 6])
    mixer = _mixer(8, grids=(1, 2, 4), store_dtype=torch.float64)
    mixer.store.update_(idx, cell_map_from_gradient(grad, 4))
    mixer._mirror_store()
    plain = rmix_fast.RMix(K, grids=(1, 2, 4), generator=torch.Generator().manual_seed(8))
    grids = set()
    for _ in range(8):
        assert not mixer.needs_grad_for(idx)
        got, want = mixer(x, y, indices=idx), plain(x, y, grad)
        assert torch.equal(mixer.last_params.mask, plain.last_params.mask)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        grids.add(mixer.last_params.grid)
    assert grids == {1, 2, 4}


def test_pool_cells_averages_the_fine_cells():
    cells = torch.arange(2 * 8 * 8, dtype=torch.float64).view(2, 8, 8)
    assert pool_cells(cells, 8) is cells
    torch.testing.assert_close(pool_cells(cells, 2), F.avg_pool2d(cells[:, None], 4)[:, 0])
    torch.testing.assert_close(pool_cells(cells, 1), cells.mean(dim=(1, 2)).view(2, 1, 1))


def test_a_non_finite_gradient_keeps_the_previous_map():
    # passed through, by a model without BatchNorm: each sample's gradient is its own
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, K))
    mixer = _mixer(prob=0.0)
    x, y = _batch(9)
    idx = torch.arange(6)
    _step(model, mixer, x, y, idx)
    before = mixer.store.maps.clone()
    x = x.flip(0)
    x[2, 0, 0, 0] = float("nan")  # the NaN reaches only sample 2's gradient (and its logits)
    _step(model, mixer, x, y, idx)
    assert torch.equal(mixer.store.maps[2], before[2])
    assert not torch.equal(mixer.store.maps[3], before[3])


def test_state_round_trip_is_exact_and_rebuilds_the_host_flags():
    model = ToyCNN(K)
    mixer = _mixer()
    x, y = _batch(10)
    _step(model, mixer, x, y, torch.tensor([0, 2, 4, 6, 8, 10]))
    buffer = io.BytesIO()
    torch.save(mixer.state_dict(), buffer)
    assert set(mixer.state_dict()) == {"store.maps", "store.seen"}
    for restored in (_mixer(), AmortisedRMix(K)):  # a mixer without a store yet takes the state's size
        buffer.seek(0)
        restored.load_state_dict(torch.load(buffer, weights_only=True))
        assert torch.equal(restored.store.maps, mixer.store.maps) and torch.equal(restored.store.seen, mixer.store.seen)
        assert not restored.needs_grad_for(torch.tensor([10, 0, 4]))
        assert restored.needs_grad_for(torch.tensor([1]))


def test_a_state_of_another_shape_is_a_clear_error():
    state = _mixer().state_dict()
    with pytest.raises(ValueError, match=r"holds 20 samples, this mixer's 30 \(the training set's size\)"):
        AmortisedRMix(K, num_samples=30).load_state_dict(state)
    with pytest.raises(ValueError, match=r"maps of shape \(20, 4, 4\).*stores 8 x 8 maps \(the finest of grids"):
        AmortisedRMix(K, grids=(2, 8), num_samples=20).load_state_dict(state)


@pytest.mark.parametrize(
    "indices,exc,msg",
    [
        (None, TypeError, "AmortisedRMix needs indices=, the batch's dataset indices"),
        (torch.tensor([0.0, 1, 2, 3, 4, 5]), TypeError, "needs indices="),
        (torch.arange(5), ValueError, r"indices must have shape \(6,\), the batch size, got \(5,\)"),
        (torch.arange(6).view(2, 3), ValueError, r"indices must have shape \(6,\)"),
        (torch.tensor([0, 1, 2, 3, 4, 20]), ValueError, r"indices must lie in \[0, 19\] .*got values in \[0, 20\]"),
        (torch.tensor([-1, 1, 2, 3, 4, 5]), ValueError, r"indices must lie in \[0, 19\]"),
        (torch.arange(6, device="meta"), ValueError, "indices must be a CPU tensor"),
    ],
)
def test_bad_indices_are_clear_errors(indices, exc, msg):
    x, y = _batch(11)
    mixer = _mixer()
    with pytest.raises(exc, match=msg):
        mixer(x, y, torch.rand(x.shape), indices=indices)
    assert not mixer.store.seen.any()


def test_bad_construction_and_wiring_are_clear_errors():
    with pytest.raises(ValueError, match=r"grids must all divide the finest grid 4 .*got grids=\(3, 4\)"):
        AmortisedRMix(K, grids=(3, 4))
    x, y = _batch(12)
    with pytest.raises(RuntimeError, match="no saliency store yet: pass num_samples"):
        AmortisedRMix(K)(x, y, torch.rand(x.shape), indices=torch.arange(6))
    with pytest.raises(ValueError, match="needs_grad_for needs the batch's dataset indices"):
        _mixer().needs_grad_for(None)
    mixer = _mixer()
    mixer(x, y, torch.rand(x.shape), indices=torch.arange(6))
    with pytest.raises(RuntimeError, match="after_backward: the batch has no gradient"):
        mixer.after_backward()
    mixer.after_backward()  # nothing pending any more: a no-op
    with torch.no_grad():  # an evaluation: nothing to store, nothing pending
        mixed, _ = mixer(x, y, torch.rand(x.shape), indices=torch.arange(6))
    assert not mixed.requires_grad
    mixer.after_backward()
    assert not mixer.store.seen.any()


def test_a_store_follows_the_mixer_to_its_device_and_the_size_hook():
    mixer = AmortisedRMix(K, grids=(2, 8)).to(torch.float64)  # buffers follow; the store does not exist yet
    mixer.set_dataset_size(7)
    assert mixer.store.maps.shape == (7, 8, 8) and mixer.store.maps.dtype == torch.float16
    store = mixer.store
    mixer.set_dataset_size(7)
    assert mixer.store is store  # the same size keeps the store
    mixer.set_dataset_size(9)
    assert mixer.store.num_samples == 9 and mixer._seen_host.shape == (9,)
    assert "num_samples=9, store_grid=8" in repr(mixer)
