"""Cells with identical content get identical saliency on every backend, whatever their position: a
gradient made of one cell pattern tiled over the image ties every cell at every percentile, so the mask is
all "top".

On a GPU a block's sum is a tree over lanes, so a kernel that sums a cell as part of a wider block gets
position-dependent sums and splits tied groups; the interpreter hides this (it sums in index order). The
Triton backend therefore runs here with the interpreter summing as a tree (``tests/helpers/gpu_order.py``)
and with the launch shapes a GPU uses (row bands, column blocks).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import rmix_fast
from tests.helpers.cases import BACKENDS, DEVICE, TRITON_INTERPRETED, layout

SHAPES = [  # (H, W, grid): 7-pixel-wide cells; non-square cells and images; several row bands per cell
    (28, 28, 4),
    (48, 112, 4),
    (40, 60, 2),
    (64, 56, 8),
]
IMAGENET = [(224, 224, 4), (224, 224, 32)]  # 56 x 56 cells, and 7 x 7 ones


def tiled_grad(B: int, C: int, H: int, W: int, grid: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    cell = torch.randn(B, C, H // grid, W // grid, generator=torch.Generator().manual_seed(seed))
    return cell.repeat(1, 1, grid, grid).to(dtype)


def gpu_order(backend: str) -> contextlib.AbstractContextManager:
    if backend == "triton" and TRITON_INTERPRETED:
        from tests.helpers.gpu_order import tree_sums

        return tree_sums()
    return contextlib.nullcontext()


def check_ties(backend: str, H: int, W: int, grid: int, dtype: torch.dtype, grad_layout: str) -> None:
    B = 2
    grad = layout(tiled_grad(B, 3, H, W, grid, dtype, seed=H + W + grid).to(DEVICE), grad_layout)
    x = torch.zeros(B, 3, H, W, device=DEVICE)
    perm = torch.tensor([1, 0], device=DEVICE)
    q = torch.tensor([0.5, 0.99], device=DEVICE)
    with gpu_order(backend):
        _, _, mask = rmix_fast.rmix(x, grad, perm=perm, lam=0.5, q=q, grid=grid, backend=backend, return_mask=True)
    assert mask.all(), f"{int((~mask).sum())} of {mask.numel()} tied cells fell below their own percentile"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("H", "W", "grid"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("grad_layout", ["contiguous", "channels_last"])
def test_identical_cells_tie(backend, H, W, grid, dtype, grad_layout):
    check_ties(backend, H, W, grid, dtype, grad_layout)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("H", "W", "grid"), IMAGENET)
@pytest.mark.parametrize("grad_layout", ["contiguous", "channels_last"])
def test_identical_cells_tie_at_imagenet_size(backend, H, W, grid, grad_layout):
    check_ties(backend, H, W, grid, torch.float32, grad_layout)


def test_tree_sum_is_position_dependent():
    """The emulated GPU order does what it is for: the same values sum differently at another offset."""
    import numpy as np

    from tests.helpers.gpu_order import tree_sum

    rng = np.random.default_rng(0)
    values = (rng.standard_normal(13) * 10 ** rng.uniform(-3, 3, 13)).astype(np.float32)
    sums = set()
    for offset in range(0, 64 - 13):
        block = np.zeros(64, dtype=np.float32)
        block[offset : offset + 13] = values
        sums.add(float(tree_sum(block, 0, False)))
    assert len(sums) > 1
