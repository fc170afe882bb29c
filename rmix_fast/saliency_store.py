"""Amortised saliency: a per-sample store of cell-saliency maps, so that R-Mix can reuse the saliency a sample
had when it was last trained on instead of running a saliency pass every step.

The training backward gives the gradient of the mixed loss w.r.t. each *original* image almost for free (make
the un-mixed batch require grad: the blend's backward routes d loss / d mixed back to every sample through its
own image and through the image it is the partner of). ``cell_map_from_gradient`` reduces that gradient to a
small per-sample map, ``SaliencyStore`` keeps it by dataset index, and ``rmix_cells`` mixes from it the next
time the sample is drawn (``lookup`` says whether it was ever seen; an unseen sample needs the fresh pass).

Under ``torch.distributed`` every rank keeps a whole store and applies every rank's updates
(``gather_updates``), so the stores stay identical and a checkpoint of any rank's store is exact for all.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rmix_fast.ops import saliency_grid
from rmix_fast.ops._checks import (
    assert_in_range_async,
    check_float_tensor,
    check_positive_int,
    describe,
    is_integer_tensor,
)
from rmix_fast.ops._dtypes import FLOAT_DTYPES
from rmix_fast.sampling import to_device

__all__ = ["SaliencyStore", "cell_map_from_gradient", "gather_updates"]


def cell_map_from_gradient(grad: Tensor, grid: int) -> Tensor:
    """(B, C, H, W) gradient -> (B, g, g) map to store: the channel-RMS saliency averaged over each cell
    (``reference.cell_saliency``, what ``rmix`` thresholds), each sample's map scaled to sum 1 as
    ``saliency_grid`` does, so that storing it in float16 keeps its precision whatever the gradient's scale
    (R-Mix's mask does not change when a sample's map is scaled). A sample whose saliency is zero or not
    finite gets the uniform map 1/g**2 (an all-"top" mask, as ``rmix`` gives it). float32 (float64 for a
    float64 gradient); no gradient flows through it."""
    return saliency_grid(grad.detach(), grid)


def _last_occurrence(indices: Tensor) -> Tensor:
    """(N,) indices -> (N,) position of the last occurrence of each entry's index. Writing ``values[last]``
    makes every write to a repeated index carry the same value, so the result does not depend on the order a
    device applies repeated writes in (a sort and a scan: no host read)."""
    n = indices.shape[0]
    order = torch.sort(indices, stable=True).indices  # positions grouped by index, in input order
    grouped = indices.index_select(0, order)
    ends_run = torch.ones(n, dtype=torch.bool, device=indices.device)
    ends_run[:-1] = grouped[1:] != grouped[:-1]
    positions = torch.arange(n, device=indices.device)
    run_end = torch.where(ends_run, positions, n).flip(0).cummin(0).values.flip(0)
    last = torch.empty_like(order)
    last[order] = order.index_select(0, run_end)
    return last


class SaliencyStore(nn.Module):
    """Cell-saliency maps of every sample of a dataset, indexed by the sample's dataset index.

    Args:
        num_samples: the dataset's size (indices lie in [0, num_samples)).
        grid: g >= 1: each map is g x g cells (the finest R-Mix grid in use; ``rmix_cells`` takes a coarser
            grid p dividing g from a map pooled down to p).
        dtype: storage dtype of the maps (float16 by default: ``cell_map_from_gradient``'s maps sum to 1).
        device: where the buffers live (the training device, so that lookups and updates never cross it).

    Buffers (in ``state_dict``, so a checkpoint restores the store exactly): ``maps`` (num_samples, g, g)
    of ``dtype``, uniform 1/g**2 until written, and ``seen`` (num_samples,) bool.

    Memory: ``num_samples * (g*g*itemsize + 1)`` bytes (``memory_bytes()``). With g = 8 in float16 a sample
    costs 128 bytes of map and 1 byte of flag: ImageNet's 1,281,167 training images take 164 MB (156 MiB) of
    maps and 1.3 MB of flags, on every rank.

    Neither ``update_`` nor ``lookup`` reads a tensor value back to the host (bad CUDA indices fail a
    device-side assert; CPU ones raise a ValueError).
    """

    maps: Tensor
    seen: Tensor

    def __init__(
        self,
        num_samples: int,
        grid: int = 8,
        *,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        num_samples = check_positive_int("num_samples", num_samples)
        grid = check_positive_int("grid", grid)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype!r}")
        self.register_buffer("maps", torch.full((num_samples, grid, grid), 1.0 / grid**2, dtype=dtype, device=device))
        self.register_buffer("seen", torch.zeros(num_samples, dtype=torch.bool, device=device))

    @property
    def num_samples(self) -> int:
        return self.maps.shape[0]

    @property
    def grid(self) -> int:
        return self.maps.shape[1]

    def memory_bytes(self) -> int:
        """Bytes held by the buffers."""
        return self.maps.numel() * self.maps.element_size() + self.seen.numel() * self.seen.element_size()

    def _indices(self, indices: object) -> Tensor:
        """(B,) integer dataset indices on the store's device (CPU indices are copied there without blocking)."""
        if not isinstance(indices, Tensor) or not is_integer_tensor(indices):
            raise TypeError(f"indices must be an integer torch.Tensor, got {describe(indices)}")
        if indices.dim() != 1:
            raise ValueError(f"indices must be 1-D (B,), got shape {tuple(indices.shape)}")
        device = self.maps.device
        if indices.device != device and indices.device.type != "cpu":
            raise ValueError(
                f"indices are on {indices.device} but the store is on {device}; pass them there or on the CPU"
            )
        assert_in_range_async(indices, self.num_samples, "indices")
        return to_device(indices.long(), device)

    def update_(self, indices: Tensor, cell_maps: Tensor) -> None:
        """Writes ``cell_maps`` (B, g, g) (cast to the store's dtype) as the maps of samples ``indices`` (B,) and
        marks them seen. Where an index repeats, its last map wins (on every device alike)."""
        idx = self._indices(indices)
        cell_maps = check_float_tensor("cell_maps", cell_maps)
        want = (idx.shape[0], self.grid, self.grid)
        if tuple(cell_maps.shape) != want:
            raise ValueError(
                f"cell_maps must have shape {want} (indices' length, grid, grid), got {tuple(cell_maps.shape)}"
            )
        if cell_maps.device != self.maps.device:
            raise ValueError(f"cell_maps are on {cell_maps.device} but the store is on {self.maps.device}")
        with torch.no_grad():
            values = cell_maps.detach().to(self.maps.dtype).index_select(0, _last_occurrence(idx))
            self.maps.index_put_((idx,), values)
            self.seen.index_fill_(0, idx, True)

    def lookup(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Samples ``indices`` (B,) -> (their maps as (B, g, g) float32, (B,) bool: written at least once)."""
        idx = self._indices(indices)
        return self.maps.index_select(0, idx).float(), self.seen.index_select(0, idx)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, grid={self.grid}, dtype={self.maps.dtype}"


def gather_updates(indices: Tensor, maps: Tensor, group: dist.ProcessGroup | None = None) -> tuple[Tensor, Tensor]:
    """Every rank's (indices, maps) of one step, concatenated in rank order, on every rank of ``group``: apply
    them with ``store.update_`` on each rank and every rank's store stays identical (a repeated index gets the
    highest rank's map everywhere). Without an initialised process group (or with one rank) returns the inputs.

    Every rank must call it with the same shapes and dtypes (equal batch sizes per rank: the distributed sampler
    with ``drop_last``), like any collective. Cast ``maps`` to the store's dtype first to send half the bytes.
    """
    if not isinstance(indices, Tensor) or not is_integer_tensor(indices) or indices.dim() != 1:
        raise TypeError(f"indices must be a 1-D integer torch.Tensor, got {describe(indices)}")
    maps = check_float_tensor("maps", maps)
    if maps.dim() != 3 or maps.shape[0] != indices.shape[0]:
        raise ValueError(f"maps must have shape ({indices.shape[0]}, g, g) to match indices, got {tuple(maps.shape)}")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return indices, maps
    world = dist.get_world_size(group)
    indices, maps = indices.long().contiguous(), maps.contiguous()
    all_indices = [torch.empty_like(indices) for _ in range(world)]
    all_maps = [torch.empty_like(maps) for _ in range(world)]
    dist.all_gather(all_indices, indices, group=group)
    dist.all_gather(all_maps, maps, group=group)
    return torch.cat(all_indices), torch.cat(all_maps)
