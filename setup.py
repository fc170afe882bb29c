"""Build entry point. Metadata lives in pyproject.toml; this file adds the compiled "cpp" backend.

The extension is built with torch's cpp_extension (ninja) against the torch that is installed, so
install torch first and build without pip's build isolation:

    pip install torch==2.13.0 setuptools wheel ninja
    pip install --no-build-isolation -e .

It is optional: set RMIX_FAST_NO_EXT=1 to skip it. Without torch at build time, without a compiler, or
when compiling fails, the package still installs and runs on its Python backends, and
``rmix_fast.available_backends()`` says why "cpp" is missing. Set RMIX_FAST_REQUIRE_EXT=1 to make a
failed build an error instead (CI does). The CUDA kernel is added only where both a CUDA toolkit and a
CUDA build of torch are present; RMIX_FAST_NO_CUDA=1 builds the CPU kernel only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def say(message: str) -> None:
    print(f"rmix_fast setup: {message}", file=sys.stderr)


def source_list() -> list[str]:
    """csrc/sources.txt, shared with CMakeLists.txt."""
    lines = (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def extension_setup() -> dict:
    if flag("RMIX_FAST_NO_EXT"):
        say("RMIX_FAST_NO_EXT is set: building without the compiled 'cpp' backend")
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if flag("RMIX_FAST_REQUIRE_EXT"):
            raise
        say(
            "torch is not importable at build time, so the compiled 'cpp' backend is skipped. "
            "Install torch first and build with: pip install --no-build-isolation -e ."
        )
        return {}

    sources = source_list()
    cuda_sources = [s for s in sources if s.endswith(".cu")]
    cpp_sources = [s for s in sources if not s.endswith(".cu")]
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and not flag("RMIX_FAST_NO_CUDA")
    say(f"building the 'cpp' backend for CPU{' and CUDA' if with_cuda else ''} against torch {torch.__version__}")

    # -ffp-contract=off: no fused multiply-add, so the blend rounds exactly like the reference.
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
    nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]
    kind = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    extension = kind(
        name="rmix_fast._C",
        sources=cpp_sources + (cuda_sources if with_cuda else []),
        include_dirs=[str(ROOT / "csrc")],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if with_cuda else {"cxx": cxx},
        extra_link_args=["-fopenmp"],  # resolves to the libgomp torch already loaded
        # optional: an editable install does not fail copying a library whose build failed
        optional=not flag("RMIX_FAST_REQUIRE_EXT"),
    )

    class BuildExtension(cpp_extension.BuildExtension):
        """A failed compile leaves a working package without "cpp" unless RMIX_FAST_REQUIRE_EXT=1."""

        def build_extensions(self):  # wraps torch's own pre-checks (compiler ABI, CUDA version) too
            try:
                super().build_extensions()
            except Exception as exc:
                if flag("RMIX_FAST_REQUIRE_EXT"):
                    raise
                say(f"building rmix_fast._C failed ({type(exc).__name__}: {exc}); installing without 'cpp'")

    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)}}


setup(**extension_setup())
