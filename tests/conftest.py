"""Test setup: the Triton interpreter without a GPU, the test tiers, and the hypothesis profile.

Tiers (markers, declared in pyproject.toml):
* ``build``: every test under tests/build/ (compiler and CMake builds, sm_90 compiles), marked here by folder;
* ``slow``: end-to-end runs (the CLI, the demo, torchrun, benchmarks as code), marked in their modules;
* ``cuda``: needs a CUDA device; skipped where there is none.

``python -m pytest`` runs everything (CI); ``python -m pytest -m "not slow and not build"`` is the quick tier.
"""

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton backend runs in the interpreter, which must be chosen before rmix_fast (and so
# its kernels) is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings

# The interpreter is serial Python: no per-example deadline, a modest number of examples.
settings.register_profile("rmix", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("rmix")

BUILD_TESTS = Path(__file__).parent / "build"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if BUILD_TESTS in Path(item.path).parents:
            item.add_marker(pytest.mark.build)
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)


@pytest.fixture(autouse=True)
def _restore_global_rng():
    """Tests that draw from the global RNG do not change what later tests draw."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)
