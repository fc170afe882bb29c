"""Compiles the CUDA kernels of the compiled op (``csrc/cuda/rmix_cuda.cu``) for sm_90 (H100) with nvcc,
against the installed torch's headers, as torch's cpp_extension would build them.

Needs no GPU (and works with a CPU build of torch, whose include directory still ships the ATen/c10 CUDA
headers): it checks that the source compiles, not what it computes. Skipped only when ``nvcc`` is not on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils import cpp_extension

SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "cuda" / "rmix_cuda.cu"


def _nvcc_command(nvcc: str, obj: Path) -> list[str]:
    # include_paths(device_type="cpu"): torch's include dirs only; nvcc finds the CUDA toolkit's own headers
    # itself. (device_type="cuda" also adds CUDA_HOME/include and raises when CUDA_HOME cannot be found.)
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    flags = [
        "-std=c++20",  # as torch 2.13 (its headers need C++20) and setup.py build extensions
        "-arch=sm_90",  # device code is optimised (-O3) by default; host code stays at -O0 to keep this quick
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-DTORCH_EXTENSION_NAME=_C",
        "-Xcompiler",
        "-fPIC",
        *cpp_extension.COMMON_NVCC_FLAGS,  # -D__CUDA_NO_HALF_OPERATORS__ ... --expt-relaxed-constexpr
    ]
    if not (Path(cpp_extension.include_paths()[0]) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").is_file():
        # A CPU build of torch ships c10/cuda headers without this generated file; the header's own
        # switch skips it (on Linux it only holds a Windows DLL-export setting).
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    if "--expt-relaxed-constexpr" not in flags:
        flags.append("--expt-relaxed-constexpr")
    return [nvcc, *flags, *includes, "-c", str(SOURCE), "-o", str(obj)]


def test_cuda_source_compiles_for_sm90(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH: cannot compile csrc/cuda/rmix_cuda.cu")
    assert SOURCE.is_file(), f"missing {SOURCE}"
    obj = tmp_path / "rmix_cuda.o"
    run = subprocess.run(_nvcc_command(nvcc, obj), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"nvcc failed ({run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-8000:]}"
    assert obj.is_file() and obj.stat().st_size > 0, "nvcc reported success but wrote no object file"
    # torch's own headers may warn; our source must not
    ours = [line for line in run.stderr.splitlines() if SOURCE.name in line and "warning" in line.lower()]
    assert not ours, "nvcc warns about the source:\n" + "\n".join(ours)
