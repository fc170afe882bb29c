"""Loads the compiled op library (rmix_fast._C, built by setup.py) and says why it cannot when it cannot.

The library registers ``rmix_fast::<op>_cpp`` and ``rmix_fast::<op>_cpp_backward`` for every op with the
dispatcher (TORCH_LIBRARY in csrc/ops.cpp); it has no Python module init, so it is loaded with
``torch.ops.load_library`` rather than imported.
"""

from __future__ import annotations

import importlib.util

import torch

REBUILD = "pip install torch setuptools wheel ninja && pip install --no-build-isolation -e ."
# Every op of the package (tests/ops/test_op_contracts.py keeps this in step with the registered OpSpecs);
# a library built from older sources lacks some.
COMPILED_OPS = ("blend_regions", "blend_sources", "rmix", "sage")
OP_NAMES = tuple(f"{op}_cpp{suffix}" for op in COMPILED_OPS for suffix in ("", "_backward"))


def _load() -> str | None:
    """Loads the library once; returns why it is unusable, or None when it loaded."""
    spec = importlib.util.find_spec("rmix_fast._C")
    if spec is None or spec.origin is None:
        return (
            "the compiled extension rmix_fast._C is not built (it is skipped when RMIX_FAST_NO_EXT=1 is set, when "
            f"torch is missing at build time, or when compiling fails); build it with: {REBUILD}"
        )
    try:
        torch.ops.load_library(spec.origin)
    except Exception as exc:  # most often an OSError: built against another torch version
        return (
            f"loading {spec.origin} failed ({type(exc).__name__}: {exc}); "
            f"rebuild it against the installed torch: {REBUILD}"
        )
    missing = [name for name in OP_NAMES if not hasattr(torch.ops.rmix_fast, name)]
    if missing:
        return f"{spec.origin} is out of date (it lacks {', '.join(missing)}); rebuild it: {REBUILD}"
    return None


def _has_kernel(dispatch_key: str) -> bool:
    return EXTENSION_PROBLEM is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"rmix_fast::{COMPILED_OPS[0]}_cpp", dispatch_key
    )


# Found once at import: constants that torch.compile can trace through.
EXTENSION_PROBLEM = _load()
HAS_CPU_KERNEL = _has_kernel("CPU")
HAS_CUDA_KERNEL = _has_kernel("CUDA")  # only where the build found a CUDA toolkit and a CUDA torch
