"""``import rmix_fast`` and every public library module load the library only: never the training
application nor matplotlib (an extra of the application), and never the ``python -m`` command modules
``rmix_fast.train`` / ``rmix_fast.compare`` / ``rmix_fast.demo``. numpy is not checked: torch imports it itself."""

from __future__ import annotations

import os
import subprocess
import sys

LIBRARY_MODULES = (
    "rmix_fast",
    "rmix_fast.adautomix",
    "rmix_fast.ops",
    "rmix_fast.mixers",
    "rmix_fast.reference",
    "rmix_fast.viz",
)
FORBIDDEN = ("rmix_fast.training", "rmix_fast.train", "rmix_fast.compare", "rmix_fast.demo", "matplotlib")


def test_library_import_stays_lean():
    # A fresh interpreter: this test session has imported the application already.
    script = (
        f"import sys\nimport {', '.join(LIBRARY_MODULES)}\n"
        f"print(sorted({{m for m in sys.modules for f in {FORBIDDEN!r} if m == f or m.startswith(f + '.')}}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"importing the library pulled in {done.stdout.strip()}"


def test_library_runs_without_numpy(tmp_path):
    """The library's dependencies are torch, triton and pillow: the ops, a mixer and a picture work with numpy
    hidden (only the Triton interpreter, a test tool, computes with numpy)."""
    script = """
import sys
sys.modules["numpy"] = None
import warnings
warnings.filterwarnings("ignore")
import torch, rmix_fast
from rmix_fast.viz import save_mix_grid
x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
mixer = rmix_fast.CutMix(3, generator=torch.Generator().manual_seed(0))
mixed, _ = mixer(x, y)
p = mixer.last_params
print(save_mix_grid(sys.argv[1], x, p.perm, mixed, p.lam_eff, regions=p.region_map()).stat().st_size > 0)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter is numpy's
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "mix.png")], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
