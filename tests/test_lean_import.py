"""``import rmix_fast`` (and each public library module) loads the library only: never the training
application nor matplotlib (an extra of the application). numpy is not checked: torch imports it itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

LIBRARY_MODULES = ["rmix_fast", "rmix_fast.ops", "rmix_fast.mixers", "rmix_fast.reference", "rmix_fast.viz"]
FORBIDDEN = ("rmix_fast.training", "matplotlib")


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_library_import_stays_lean(module):
    # A fresh interpreter: this test session has imported the application already.
    script = (
        f"import sys, {module}\n"
        f"bad = sorted({{m.split('.')[0] if not m.startswith('rmix_fast') else 'rmix_fast.training' "
        f"for m in sys.modules if m.startswith({FORBIDDEN!r})}})\n"
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"import {module} pulled in {done.stdout.strip()}"


def test_application_entry_modules_are_not_part_of_the_library():
    """``rmix_fast.train`` and ``rmix_fast.demo`` exist for ``python -m``; the package never imports them."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, rmix_fast; print('rmix_fast.train' in sys.modules, 'rmix_fast.demo' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.split() == ["False", "False"], done.stderr
