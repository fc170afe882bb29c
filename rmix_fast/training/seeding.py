"""Seeds of every random stream of a run, from integers alone.

Every random choice of an epoch (sample order, crop and flip, mixing draws) comes from a generator seeded
by ``(seed, epoch, rank, stream)``, and per-sample augmentation from ``(seed, epoch, index)``. Nothing
depends on what ran before, so a run resumed at an epoch boundary sees exactly what an uninterrupted run
would, and the number of DataLoader workers changes nothing.
"""

from __future__ import annotations

import torch

__all__ = ["AUGMENT", "MIX", "ORDER", "mix_seed", "seeded"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of the splitmix64 finaliser: a bijective, well-mixing map of 64-bit ints."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A seed in [0, 2**63) from a tuple of ints (e.g. (seed, epoch, index)), for ``Generator.manual_seed``.

    Nearby tuples give unrelated seeds (unlike ``seed + index``, where (0, 1) and (1, 0) collide), so
    per-sample generators seeded this way give independent streams.
    """
    h = 0x243F6A8885A308D3  # arbitrary non-zero start
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1


# Streams of one epoch's randomness, behind a tag of their own so they never share a seed with the
# per-sample streams (seed, epoch, index) of the image-folder augmentation.
_TAG = 0x6D6978  # "mix"
ORDER, AUGMENT, MIX = 0, 1, 2


def seeded(*parts: int) -> torch.Generator:
    """A CPU generator seeded from integers (``mix_seed``); different tuples give unrelated streams."""
    return torch.Generator().manual_seed(mix_seed(_TAG, *parts))
