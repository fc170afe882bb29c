"""Builds every R-Mix Triton kernel for an H100 (sm_90) without a GPU.

The interpreter runs the kernels' Python; this runs Triton's real compiler down to a cubin (with the
ptxas that ships in the triton wheel), so typing and lowering errors of the compiled path surface in
CPU-only CI too. It checks that the kernels build, not what they compute on a GPU.

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
    assert "built 60 kernels" in run.stdout, run.stdout
