"""The worker of ``test_saliency_store.py``'s DDP test, started by ``torch.multiprocessing.spawn`` on 2 gloo
processes: each rank updates its own ``SaliencyStore`` with every rank's maps (``gather_updates``) for a few
steps and saves the store's state and what it saw to ``OUT_DIR/rank<r>.pt``.

Each rank's batch of every step is ``rank_batch(rank, step)``, so the test can replay all ranks' updates in
one process."""

from __future__ import annotations

import torch
import torch.distributed as dist

from rmix_fast.saliency_store import SaliencyStore, cell_map_from_gradient, gather_updates

NUM_SAMPLES, GRID, BATCH, STEPS = 24, 4, 5, 3


def rank_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One rank's (indices, maps) of one step: its own samples; at step 1 both ranks hold sample 7 (the
    padding a distributed sampler adds), which must end with rank 1's map on both ranks."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    indices = torch.randperm(NUM_SAMPLES // 2, generator=g)[:BATCH] * 2 + rank  # rank r: indices = r mod 2
    if step == 1:
        indices[0] = 7
    grad = torch.randn(BATCH, 3, 8, 8, generator=g)
    return indices, cell_map_from_gradient(grad, GRID)


def run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        store = SaliencyStore(NUM_SAMPLES, GRID)
        gathered = []
        for step in range(STEPS):
            indices, maps = rank_batch(rank, step)
            all_indices, all_maps = gather_updates(indices, maps.to(store.maps.dtype))
            store.update_(all_indices, all_maps)
            gathered.append(all_indices)
        torch.save({"state": store.state_dict(), "gathered": gathered}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
