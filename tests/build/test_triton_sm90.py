"""Builds every Triton kernel for an H100 (sm_90) without a GPU, as the JIT would, and reads the PTX.

The interpreter runs the kernels' Python; this runs Triton's real compiler down to a cubin (with the
ptxas that ships in the triton wheel) on the specialisations the JIT would make for real launches, so
typing and lowering errors of the compiled path surface in CPU-only CI too, and so do what the interpreter
hides: FMA contraction, scalar where vector loads were meant, 32-bit offsets that overflow, and a
recompile per random draw. See ``tests/helpers/sm90_build.py`` for each check.

The builds run in a subprocess: this test session set TRITON_INTERPRET=1, under which the kernels
are interpreted functions the compiler cannot take.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_every_kernel_builds_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "tests.helpers.sm90_build"], env=env, capture_output=True, text=True, timeout=600
    )
    if run.returncode == 77:
        pytest.skip(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0, f"kernel build failed:\n{run.stdout}\n{run.stderr[-4000:]}"
    for line in (
        "blend kernels: 128-bit loads and stores on dense layouts, no FMA",
        "offsets: 64-bit for a sample spanning 2**31 elements, 32-bit otherwise",
        "saliency kernels: no FMA",
        "-> 1 variant per kernel per (dtype, layout)",
        "rmix: grids 2 and 4, batches 64 and 37 -> 1 variant per kernel per (dtype, layout)",
        "blend_sources kernels: 128-bit image loads and stores where dense, 64-bit offsets where needed, no FMA",
        "blend_sources: scales 8, 16, 32, batches 64 and 37 -> 1 variant per kernel per (dtype, layout)",
        "sage kernels: no FMA, 64-bit offsets for the big view, 1 variant per kernel per (dtype, layout)",
        "built ",
    ):
        assert line in run.stdout, f"missing {line!r} in:\n{run.stdout}"
    assert "cutmix: 28 distinct grids in 100 batches" in run.stdout, run.stdout
