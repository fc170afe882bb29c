"""Test setup: without a GPU the Triton backend runs in the interpreter, which must be chosen before
rmix_fast (and so its kernels) is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings

# The interpreter is serial Python: no per-example deadline, a modest number of examples.
settings.register_profile("rmix", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("rmix")
