"""Which samples each step sees, and how a batch gets onto the device (the order's seed: ``seeding``)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from rmix_fast.training.data.augment import crop_flip
from rmix_fast.training.seeding import ORDER, seeded

__all__ = ["epoch_batches", "iterate_batches", "to_pixels"]


def epoch_batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> list[Tensor]:
    """This rank's batches of sample indices for one epoch.

    Training (``shuffle=True``) draws one permutation of all ``n`` samples for the epoch, identical on
    every rank, and gives rank r every ``world_size``-th sample from r on, cut to the same length on
    every rank (DDP needs equal step counts). Evaluation (``shuffle=False``) shards ``0..n-1`` the same
    way without cutting, so every sample is seen exactly once across ranks.
    """
    order = torch.randperm(n, generator=seeded(seed, epoch, ORDER)) if shuffle else torch.arange(n)
    mine = order[rank::world_size]
    if shuffle:
        mine = mine[: n // world_size]
    batches = list(torch.split(mine, batch_size))
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def iterate_batches(
    dataset: Dataset, batches: list[Tensor], *, device: torch.device, workers: int = 0
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yields ``(uint8 images (B, C, H, W), int64 labels (B,), indices (B,))`` on ``device``.

    In-memory datasets (with an ``images`` tensor) are indexed directly; others go through a DataLoader
    with ``workers`` processes, in the given batch order.
    """
    non_blocking = device.type == "cuda"
    images = getattr(dataset, "images", None)
    if isinstance(images, Tensor):
        labels = dataset.labels
        for idx in batches:
            yield _gather(images, idx, device), _gather(labels, idx, device), idx
        return
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=non_blocking)
    for x, y, idx in loader:
        yield x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking), idx


def _gather(t: Tensor, idx: Tensor, device: torch.device) -> Tensor:
    """``t[idx]`` on ``device``. To CUDA the rows are gathered straight into pinned memory and copied without
    blocking: a copy from pageable memory would synchronise the stream first."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t[idx].to(device)
    pinned = torch.empty((idx.shape[0], *t.shape[1:]), dtype=t.dtype, pin_memory=True)
    return torch.index_select(t, 0, idx, out=pinned).to(device, non_blocking=True)


def to_pixels(
    x: Tensor,
    *,
    augment: bool,
    padding: int = 4,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1], after random crop (zero ``padding``) and flip if ``augment``."""
    if augment:
        x = crop_flip(x, padding=padding, generator=generator)
    x = x.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
