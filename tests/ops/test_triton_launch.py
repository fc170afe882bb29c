"""The Triton launchers' plans, checked without a GPU: the launch shapes do not depend on the interpreter
(the tests run what a GPU runs), the grid takes any batch, and the 64-bit offset path (taken when one
sample spans 2**31 elements) computes what the 32-bit one does. The compiled variants these plans give
are counted and their PTX read in ``tests/build/test_triton_sm90.py``."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from rmix_fast import reference
from tests.helpers.cases import BACKENDS, check_against_reference, make_case, make_regions

pytestmark = pytest.mark.skipif("triton" not in BACKENDS, reason="the Triton backend does not run here")

META = torch.device("meta")

PLAN_SCRIPT = r"""
import json, torch
from rmix_fast.ops._triton import blend_regions as br, rmix as rm
from rmix_fast.ops._triton._launch import INTERPRETED
meta = torch.device("meta")
x = torch.empty((64, 3, 224, 224), dtype=torch.bfloat16, device=meta).contiguous(memory_format=torch.channels_last)
perm = torch.empty(64, dtype=torch.int64, device=meta)
lam = torch.empty(64, device=meta)
mask = torch.empty((64, 4), dtype=torch.int8, device=meta)
partials = torch.empty((64, 2, 7, 224), device=meta)
plans = [
    br.plan_blend(x, torch.empty_like(x), lam, mask, perm, lam, 2, 2, True),
    br.plan_blend_backward(x, torch.empty_like(x), mask, perm, perm, lam, 2, 2, True),
    rm.plan_saliency(x, partials, 2),
    rm.plan_threshold(partials, lam, lam, mask, 2, 112 * 112),
]
def plain(v):
    return v if isinstance(v, (int, float, bool, str)) else str(v)
print(json.dumps({"interpreted": INTERPRETED, "plans": [
    {"grid": p.grid, "constexprs": {k: plain(v) for k, v in p.constexprs.items()},
     "ints": [a for a in p.args if isinstance(a, int)], "options": p.options} for p in plans]}))
"""


def plans_in_subprocess(interpret: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    run = subprocess.run([sys.executable, "-c", PLAN_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_launch_shapes_do_not_depend_on_the_interpreter():
    """The interpreter runs the GPU's launch shapes: several row bands per cell, the same tiles and grids."""
    interpreted, compiled = plans_in_subprocess(True), plans_in_subprocess(False)
    assert interpreted["interpreted"] and not compiled["interpreted"]
    assert interpreted["plans"] == compiled["plans"]
    saliency = compiled["plans"][2]
    assert saliency["ints"][-1] == 7, "a 112-row cell is read in 7 bands of 16 rows"


def test_a_batch_of_100000_launches():
    """One 1-D grid over (sample, tile): no grid axis limited to 65535 carries the batch."""
    from rmix_fast.ops._triton import blend_regions as br
    from rmix_fast.ops._triton import rmix as rm

    B = 100_000
    x = torch.empty((B, 1, 2, 2), device=META)
    perm, lam = torch.empty(B, dtype=torch.int64, device=META), torch.empty(B, device=META)
    codes = torch.empty((B, 1, 1), dtype=torch.int8, device=META)
    partials = torch.empty((B, 2, 1, 2), device=META)
    plans = [
        br.plan_blend(x, torch.empty_like(x), lam, codes, perm, lam, 1, 1, False),
        br.plan_blend_backward(x, torch.empty_like(x), codes, perm, perm, lam, 1, 1, False),
        rm.plan_saliency(x, partials, 2),
        rm.plan_threshold(partials, lam, lam, codes, 2, 1),
    ]
    for plan in plans:
        assert len(plan.grid) == 1 and B <= plan.grid[0] <= 2**31 - 1, (plan.kernel, plan.grid)


def test_wide_offsets_only_where_needed():
    from rmix_fast.ops._triton._launch import needs_wide_offsets

    big = torch.empty((3, 4096, 512, 512), dtype=torch.bfloat16, device=META).permute(1, 0, 2, 3)
    assert needs_wide_offsets([big])  # sample b holds elements b*512*512 + c*2**30 + ...: past 2**31
    assert not needs_wide_offsets([torch.empty((4096, 3, 224, 224), device=META)])  # B alone is not a reason


def wide(plan):
    return dataclasses.replace(plan, constexprs={**plan.constexprs, "WIDE": True})


@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last", "strided"])
def test_64_bit_offsets_compute_the_same(x_layout):
    """The 64-bit offset path, forced on small tensors, gives the reference's blend, gradient and mask."""
    from rmix_fast.ops._triton import blend_regions as br
    from rmix_fast.ops._triton import rmix as rm

    case = make_case(B=5, H=12, W=8, grid=4, x_layout=x_layout, grad_layout=x_layout, seed=31)
    regions = make_regions(5, 3, 2, seed=32)
    lam = torch.rand(5, generator=torch.Generator().manual_seed(33))
    mixed, lam_eff = torch.empty_like(case.x), torch.empty(5)
    wide(br.plan_blend(case.x, mixed, lam_eff, regions, case.perm, lam, 3, 2, False))()
    want, want_lam_eff = reference.blend_regions_forward(case.x, regions, case.perm, lam)
    assert torch.equal(mixed, want) and torch.equal(lam_eff, want_lam_eff)
    grad_x = torch.empty_like(case.x)
    wide(br.plan_blend_backward(case.x, grad_x, regions, case.perm, torch.argsort(case.perm), lam, 3, 2, False))()
    assert torch.equal(grad_x, reference.blend_regions_backward(case.x, regions, case.perm, lam))
    partials = torch.empty((5, 4, 1, 8))
    wide(rm.plan_saliency(case.grad, partials, 4))()
    narrow = torch.empty_like(partials)
    rm.plan_saliency(case.grad, narrow, 4)()
    assert torch.equal(partials, narrow)


@pytest.mark.parametrize(("H", "W", "grid"), [(40, 60, 1), (64, 40, 2), (48, 24, 3)])
def test_cells_read_in_several_row_bands(H, W, grid):
    """Cells taller than one band (16 rows), the last band partly filled, as on a GPU."""
    check_against_reference("triton", make_case(3, 3, H, W, grid=grid, seed=H + W))
