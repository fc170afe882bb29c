"""``SaliencyStore``, ``cell_map_from_gradient`` and ``gather_updates``: the stored map equals its definition,
updates and lookups by dataset index (repeated indices: the last map wins), the memory the docstring states,
an exact ``state_dict`` round trip, clear errors for bad indices and shapes, no host read on the step's path,
and identical stores on 2 gloo ranks that apply each other's updates."""

from __future__ import annotations

import io

import pytest
import torch
import torch.multiprocessing as mp

import rmix_fast
from rmix_fast import reference
from rmix_fast.saliency_store import SaliencyStore, cell_map_from_gradient, gather_updates
from tests.helpers import ddp_store_worker as worker
from tests.helpers.cases import DEVICE
from tests.helpers.sync_probe import HostReadProbe


def cell_map_by_definition(grad: torch.Tensor, grid: int) -> torch.Tensor:
    """The map in float64, sample by sample and cell by cell: mean over the cell's pixels of sqrt(mean over
    channels of grad**2), divided by the sample's total; uniform 1/g**2 for a zero or non-finite sample."""
    B, _, H, W = grad.shape
    ch, cw = H // grid, W // grid
    out = torch.empty(B, grid, grid, dtype=torch.float64)
    for b in range(B):
        s = grad[b].double().square().mean(dim=0).sqrt()
        for i in range(grid):
            for j in range(grid):
                out[b, i, j] = s[i * ch : (i + 1) * ch, j * cw : (j + 1) * cw].mean()
        total = out[b].sum()
        usable = torch.isfinite(total) and total > 0
        out[b] = out[b] / total if usable else torch.full((grid, grid), 1.0 / grid**2, dtype=torch.float64)
    return out


def random_maps(n: int, grid: int, seed: int) -> torch.Tensor:
    return cell_map_from_gradient(torch.randn(n, 3, 2 * grid, 2 * grid, generator=torch.Generator().manual_seed(seed)),
                                  grid).to(DEVICE)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("H,W,grid", [(16, 16, 8), (12, 20, 4), (9, 6, 3), (8, 8, 1)])
def test_cell_map_equals_its_definition(dtype, H, W, grid):
    grad = torch.randn(4, 3, H, W, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e-3
    grad[1] = 0.0
    grad[2, 0, 0, 0] = float("nan")
    grad[3, 1, 1, 1] = float("inf")
    got = cell_map_from_gradient(layout_channels_last(grad.to(dtype)), grid)
    assert got.shape == (4, grid, grid) and got.dtype == reference.accumulate_dtype(dtype)
    want = cell_map_by_definition(grad.to(dtype), grid)
    torch.testing.assert_close(got.double(), want, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)
    torch.testing.assert_close(got.sum(dim=(1, 2)).double(), torch.ones(4, dtype=torch.float64))
    # the unnormalised cell saliency R-Mix thresholds, over its sum
    cells = reference.cell_saliency(grad.to(dtype), grid)[0]
    torch.testing.assert_close(got[0], cells / cells.sum())


def layout_channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def test_cell_map_keeps_its_precision_in_float16_at_any_gradient_scale():
    grad = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for scale in (1e-12, 1.0, 1e12):  # the raw cell saliency under- or overflows float16 at both ends
        stored = cell_map_from_gradient(grad * scale, 8).half()
        assert torch.isfinite(stored).all() and (stored > 0).all()
        torch.testing.assert_close(stored.float(), cell_map_from_gradient(grad, 8), rtol=2**-10, atol=0)


def test_cell_map_takes_no_gradient():
    grad = torch.randn(2, 3, 8, 8, requires_grad=True)
    assert not cell_map_from_gradient(grad * 2, 4).requires_grad


def test_a_new_store():
    store = SaliencyStore(10, 4, device=DEVICE)
    assert store.num_samples == 10 and store.grid == 4
    assert store.maps.shape == (10, 4, 4) and store.maps.dtype == torch.float16 and store.maps.device == DEVICE
    assert store.seen.shape == (10,) and store.seen.dtype == torch.bool and not store.seen.any()
    assert (store.maps == 1 / 16).all(), "an unwritten map is uniform (no saliency)"
    maps, seen = store.lookup(torch.tensor([3, 0, 9]))
    assert maps.dtype == torch.float32 and maps.shape == (3, 4, 4) and not seen.any()
    assert "num_samples=10, grid=4, dtype=torch.float16" in repr(store)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_update_and_lookup(dtype):
    store = SaliencyStore(12, 4, dtype=dtype, device=DEVICE)
    first = random_maps(3, 4, seed=2)
    store.update_(torch.tensor([5, 0, 11]), first)
    second = random_maps(2, 4, seed=3)
    store.update_(torch.tensor([11, 2], device=DEVICE), second.double())  # any float dtype, any index device
    maps, seen = store.lookup(torch.tensor([0, 5, 11, 2, 1, 0]))
    want = torch.stack([first[1], first[0], second[0], second[1]]).to(dtype).float()
    assert maps.dtype == torch.float32 and torch.equal(maps[:4], want) and torch.equal(maps[5], want[0])
    assert (maps[4] == 1 / 16).all()
    assert seen.tolist() == [True, True, True, True, False, True]
    assert store.seen.nonzero().flatten().tolist() == [0, 2, 5, 11]


def test_strided_and_int32_inputs():
    store = SaliencyStore(8, 2, device=DEVICE)
    wide = torch.zeros(3, 2, 4, device=DEVICE)
    wide[..., ::2] = random_maps(3, 2, seed=4)
    indices = torch.tensor([7, 0, 6, 1, 3, 2], dtype=torch.int32)[::2]
    store.update_(indices, wide[..., ::2])
    maps, seen = store.lookup(indices)
    assert torch.equal(maps, wide[..., ::2].half().float()) and seen.all()


def test_a_repeated_index_keeps_its_last_map():
    store = SaliencyStore(6, 2, dtype=torch.float32, device=DEVICE)
    maps = torch.arange(6 * 4, dtype=torch.float32, device=DEVICE).view(6, 2, 2)
    indices = torch.tensor([3, 1, 3, 4, 1, 3])
    store.update_(indices, maps)
    got, _ = store.lookup(torch.tensor([1, 3, 4]))
    assert torch.equal(got, maps[[4, 5, 3]])


def test_an_empty_update():
    store = SaliencyStore(4, 2, device=DEVICE)
    store.update_(torch.empty(0, dtype=torch.long), torch.empty(0, 2, 2, device=DEVICE))
    maps, seen = store.lookup(torch.empty(0, dtype=torch.long))
    assert maps.shape == (0, 2, 2) and seen.shape == (0,) and not store.seen.any()


def test_memory_is_as_documented():
    assert SaliencyStore(10, 8).memory_bytes() == 10 * (128 + 1)
    assert SaliencyStore(10, 4, dtype=torch.float32).memory_bytes() == 10 * (64 + 1)
    imagenet = SaliencyStore(1_281_167, 8, device="meta")  # the docstring's numbers, without allocating them
    assert imagenet.maps.numel() * imagenet.maps.element_size() == 163_989_376  # 164 MB, 156 MiB
    assert imagenet.memory_bytes() == 163_989_376 + 1_281_167


def test_state_dict_round_trip_is_exact():
    store = SaliencyStore(9, 4, device=DEVICE)
    store.update_(torch.tensor([8, 1, 4]), random_maps(3, 4, seed=5))
    assert set(store.state_dict()) == {"maps", "seen"}
    buffer = io.BytesIO()
    torch.save(store.state_dict(), buffer)
    buffer.seek(0)
    restored = SaliencyStore(9, 4, device=DEVICE)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for name in ("maps", "seen"):
        assert torch.equal(getattr(restored, name), getattr(store, name)), name
    # updates after the restore go on exactly as they would have
    more = random_maps(2, 4, seed=6)
    store.update_(torch.tensor([1, 2]), more)
    restored.update_(torch.tensor([1, 2]), more)
    assert torch.equal(restored.maps, store.maps) and torch.equal(restored.seen, store.seen)
    with pytest.raises(RuntimeError, match="size mismatch"):
        SaliencyStore(10, 4).load_state_dict(store.state_dict())


def test_stored_maps_give_rmix_its_mask():
    """A map written, stored in float16 and looked up mixes as rmix does with the gradient it came from."""
    g = torch.Generator().manual_seed(7)
    x, grad = torch.randn(6, 3, 16, 16, generator=g).to(DEVICE), torch.randn(6, 3, 16, 16, generator=g).to(DEVICE)
    perm, q = torch.randperm(6, generator=g).to(DEVICE), torch.tensor([0.0, 0.22, 0.44, 0.55, 0.77, 0.99]).to(DEVICE)
    store = SaliencyStore(100, 4, device=DEVICE)
    indices = torch.tensor([42, 7, 99, 0, 13, 58])
    store.update_(indices, cell_map_from_gradient(grad, 4))
    maps, seen = store.lookup(indices)
    assert seen.all()
    want = rmix_fast.rmix(x, grad, perm=perm, lam=0.3, q=q, grid=4, return_mask=True)
    got = rmix_fast.rmix_cells(x, maps, perm=perm, lam=0.3, q=q, return_mask=True)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_a_coarser_grid_pools_the_stored_map():
    """A store keeps the finest grid g; R-Mix at p dividing g thresholds the map averaged over (g/p)**2 cells
    (cells of equal size: the mean of their means is the coarse cell's mean), which gives rmix's mask at p."""
    g = torch.Generator().manual_seed(10)
    x, grad = torch.randn(5, 3, 16, 24, generator=g).to(DEVICE), torch.randn(5, 3, 16, 24, generator=g).to(DEVICE)
    perm = torch.randperm(5, generator=g).to(DEVICE)
    store = SaliencyStore(5, 8, dtype=torch.float32, device=DEVICE)
    store.update_(torch.arange(5), cell_map_from_gradient(grad, 8))
    fine, _ = store.lookup(torch.arange(5))
    for p in (1, 2, 4, 8):
        coarse = fine.view(5, p, 8 // p, p, 8 // p).mean(dim=(2, 4))
        for q in (0.0, 0.33, 0.5, 0.99):
            want = rmix_fast.rmix(x, grad, perm=perm, lam=0.6, q=q, grid=p, return_mask=True)
            got = rmix_fast.rmix_cells(x, coarse, perm=perm, lam=0.6, q=q, return_mask=True)
            for a, b in zip(got, want, strict=True):
                assert torch.equal(a, b), (p, q)


def test_update_and_lookup_read_nothing_back():
    store = SaliencyStore(50, 4, device=DEVICE)
    indices = torch.tensor([3, 9, 3, 49])
    maps = random_maps(4, 4, seed=8)
    with HostReadProbe() as probe:
        store.update_(indices, maps)
        store.lookup(indices)
    assert not probe.reads, "\n".join(map(str, probe.reads))


@pytest.mark.cuda
def test_a_cuda_store_never_syncs():
    store = SaliencyStore(50, 4, device="cuda")
    maps = random_maps(4, 4, seed=9).cuda()
    for indices in (torch.tensor([3, 9, 3, 49]), torch.tensor([3, 9, 3, 49], device="cuda")):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            store.update_(indices, maps)
            store.lookup(indices)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert store.seen.sum().item() == 3


BAD_INDICES = [
    (torch.tensor([0.0, 1.0]), TypeError, "indices must be an integer torch.Tensor"),
    (torch.tensor([True, False]), TypeError, "indices must be an integer torch.Tensor"),
    ([0, 1], TypeError, "indices must be an integer torch.Tensor"),
    (torch.tensor([[0, 1]]), ValueError, r"indices must be 1-D \(B,\), got shape \(1, 2\)"),
    (torch.tensor([0, 10]), ValueError, r"indices must lie in \[0, 9\], got values in \[0, 10\]"),
    (torch.tensor([-1, 3]), ValueError, r"indices must lie in \[0, 9\], got values in \[-1, 3\]"),
    (torch.tensor([0, 1], device="meta"), ValueError, "indices are on meta but the store is on"),
]


@pytest.mark.parametrize("indices,exc,msg", BAD_INDICES, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_indices_raise(indices, exc, msg):
    store = SaliencyStore(10, 2)
    with pytest.raises(exc, match=msg):
        store.lookup(indices)
    with pytest.raises(exc, match=msg):
        store.update_(indices, torch.rand(2, 2, 2))
    assert not store.seen.any() and (store.maps == 0.25).all(), "a refused update wrote something"


BAD_MAPS = [
    (torch.rand(3, 2, 2), ValueError, r"cell_maps must have shape \(2, 2, 2\) \(indices' length, grid, grid\)"),
    (torch.rand(2, 4, 4), ValueError, r"cell_maps must have shape \(2, 2, 2\).*got \(2, 4, 4\)"),
    (torch.rand(2, 4), ValueError, r"cell_maps must have shape \(2, 2, 2\)"),
    (torch.ones(2, 2, 2, dtype=torch.int64), TypeError, "cell_maps must be float16, bfloat16, float32 or float64"),
    ("maps", TypeError, "cell_maps must be a torch.Tensor"),
    (torch.rand(2, 2, 2, device="meta"), ValueError, "cell_maps are on meta but the store is on cpu"),
]


@pytest.mark.parametrize("cell_maps,exc,msg", BAD_MAPS, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_cell_maps_raise(cell_maps, exc, msg):
    store = SaliencyStore(10, 2)
    with pytest.raises(exc, match=msg):
        store.update_(torch.tensor([1, 2]), cell_maps)
    assert not store.seen.any()


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        ({"num_samples": 0}, ValueError, "num_samples must be >= 1, got 0"),
        ({"num_samples": 2.5}, TypeError, "num_samples must be an int"),
        ({"grid": 0}, ValueError, "grid must be >= 1, got 0"),
        ({"grid": True}, TypeError, "grid must be an int"),
        ({"dtype": torch.int8}, TypeError, "dtype must be float16, bfloat16, float32 or float64"),
    ],
)
def test_bad_store_arguments_raise(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        SaliencyStore(**{"num_samples": 4, "grid": 2, **kwargs})


def test_gather_updates_without_a_process_group_hands_back_its_inputs():
    indices, maps = torch.tensor([1, 2]), torch.rand(2, 3, 3)
    got = gather_updates(indices, maps)
    assert got[0] is indices and got[1] is maps
    with pytest.raises(TypeError, match=r"indices must be a 1-D integer torch\.Tensor"):
        gather_updates(torch.tensor([1.0]), maps[:1])
    with pytest.raises(ValueError, match=r"maps must have shape \(2, g, g\) to match indices"):
        gather_updates(indices, maps[:1])
    with pytest.raises(TypeError, match="maps must be float"):
        gather_updates(indices, torch.ones(2, 3, 3, dtype=torch.int32))


@pytest.mark.slow  # two fresh interpreters importing torch
def test_two_gloo_ranks_keep_identical_stores(tmp_path):
    mp.spawn(worker.run, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name in ("maps", "seen"):
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), f"the ranks' {name} differ"
    # one process applying both ranks' batches in rank order ends with the same store
    replay = SaliencyStore(worker.NUM_SAMPLES, worker.GRID)
    for step in range(worker.STEPS):
        batches = [worker.rank_batch(rank, step) for rank in (0, 1)]
        indices = torch.cat([i for i, _ in batches])
        assert torch.equal(ranks[0]["gathered"][step], indices) and torch.equal(ranks[1]["gathered"][step], indices)
        for i, m in batches:
            replay.update_(i, m)
    assert torch.equal(replay.maps, ranks[0]["state"]["maps"]) and torch.equal(replay.seen, ranks[0]["state"]["seen"])
    assert all(7 in worker.rank_batch(rank, 1)[0] for rank in (0, 1)), "the case must repeat a sample across ranks"
    seen = {int(i) for step in range(worker.STEPS) for rank in (0, 1) for i in worker.rank_batch(rank, step)[0]}
    assert set(ranks[0]["state"]["seen"].nonzero().flatten().tolist()) == seen
