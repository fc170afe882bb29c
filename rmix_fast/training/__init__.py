"""The training application: ``rmix-train``, ``rmix-eval``, ``rmix-compare`` and the demo, with their trainer, options,
method registry, datasets, models, metrics, plots and checkpoints. It uses the library (``rmix_fast``);
nothing in the library imports it. Its command lines are its contract; its Python is not API.

Its extra dependencies come with ``pip install 'rmix_fast[train]'``.
"""

import importlib.util

_MISSING = [name for name in ("matplotlib", "numpy") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(
        f"rmix_fast.training (rmix-train, rmix-eval, rmix-compare, the demo) needs {', '.join(_MISSING)}: "
        "install the application's extra with pip install 'rmix_fast[train]'"
    )
