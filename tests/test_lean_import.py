"""``import rmix_fast`` and every public library module load the library only: never the training
application nor matplotlib (an extra of the application), and never the ``python -m`` command modules
``rmix_fast.train`` / ``rmix_fast.demo``. numpy is not checked: torch imports it itself."""

from __future__ import annotations

import subprocess
import sys

LIBRARY_MODULES = ("rmix_fast", "rmix_fast.ops", "rmix_fast.mixers", "rmix_fast.reference", "rmix_fast.viz")
FORBIDDEN = ("rmix_fast.training", "rmix_fast.train", "rmix_fast.demo", "matplotlib")


def test_library_import_stays_lean():
    # A fresh interpreter: this test session has imported the application already.
    script = (
        f"import sys\nimport {', '.join(LIBRARY_MODULES)}\n"
        f"print(sorted({{m for m in sys.modules for f in {FORBIDDEN!r} if m == f or m.startswith(f + '.')}}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"importing the library pulled in {done.stdout.strip()}"
