"""The Triton interpreter with a GPU's summation order.

The interpreter sums a block with ``numpy.sum``, which on these shapes adds the values in index order, so
a sum of a few values padded with zeros comes out the same wherever the values sit in the block. A GPU
sums a block as a tree over its lanes (within a thread, then across threads and warps), so there the
result depends on where the values sit. ``tree_sums`` makes the interpreter sum every block in one GPU
order: each thread adds its 4 contiguous elements in turn, then the threads' partial sums are combined as
a halving tree (a butterfly of shuffles). Tests can so catch a kernel whose results depend on position
before it runs on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

PER_THREAD = 4


def tree_sum(data: np.ndarray, axis: int | None, keepdims: bool) -> np.ndarray:
    a = np.moveaxis(np.asarray(data), axis, -1) if axis is not None else np.asarray(data).reshape(-1)
    per_thread = min(PER_THREAD, a.shape[-1])
    chunks = a.reshape(*a.shape[:-1], -1, per_thread)  # block sizes are powers of two
    a = chunks[..., 0].copy()
    for i in range(1, per_thread):  # within a thread: in order
        a += chunks[..., i]
    n = a.shape[-1]
    while n > 1:  # across threads: a tree
        half = (n + 1) // 2
        low = a[..., :half].copy()
        low[..., : n - half] += a[..., half:n]  # numpy keeps the dtype: one rounding per addition
        a, n = low, half
    out = a[..., 0]
    if keepdims:
        out = np.expand_dims(out, axis if axis is not None else 0)
    return out


@contextlib.contextmanager
def tree_sums() -> Iterator[None]:
    """Within the block, every ``tl.sum`` the interpreter runs is a halving tree."""
    from triton.runtime import interpreter

    original = interpreter.ReduceOps.sum

    def summed(self, input):
        return self.to_tensor(tree_sum(input.handle.data, self.axis, self.keep_dims), input.dtype)

    interpreter.ReduceOps.sum = summed
    try:
        yield
    finally:
        interpreter.ReduceOps.sum = original
