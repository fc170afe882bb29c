"""Compiles every CUDA source of the compiled ops (the ``.cu`` files of ``csrc/sources.txt``) for sm_90 (H100)
with nvcc, against the installed torch's headers, as torch's cpp_extension would build them.

Needs no GPU (and works with a CPU build of torch, whose include directory still ships the ATen/c10 CUDA
headers): it checks that the sources compile, not what they compute. Skipped only when ``nvcc`` is not on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"


def _cuda_sources() -> list[str]:
    """The .cu lines of csrc/sources.txt, read as setup.py and CMakeLists.txt read them."""
    lines = (CSRC / "sources.txt").read_text().splitlines()
    sources = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [source for source in sources if source.endswith(".cu")]


CUDA_SOURCES = _cuda_sources()


def _nvcc_command(nvcc: str, source: Path, obj: Path) -> list[str]:
    # include_paths(device_type="cpu"): torch's include dirs only; nvcc finds the CUDA toolkit's own headers
    # itself. (device_type="cuda" also adds CUDA_HOME/include and raises when CUDA_HOME cannot be found.)
    includes = [f"-I{path}" for path in [CSRC, *cpp_extension.include_paths()]]  # csrc/ as setup.py adds it
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
    return [nvcc, *flags, *includes, "-c", str(source), "-o", str(obj)]


def test_sources_list_cuda_files():
    assert CUDA_SOURCES, "csrc/sources.txt lists no .cu file"
    for source in CUDA_SOURCES:
        assert (ROOT / source).is_file(), f"csrc/sources.txt lists {source}, which does not exist"


@pytest.mark.parametrize("source", CUDA_SOURCES)
def test_cuda_source_compiles_for_sm90(source, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip(f"nvcc is not on PATH: cannot compile {source}")
    path = ROOT / source
    obj = tmp_path / (path.stem + ".o")
    run = subprocess.run(_nvcc_command(nvcc, path, obj), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"nvcc failed ({run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-8000:]}"
    assert obj.is_file() and obj.stat().st_size > 0, "nvcc reported success but wrote no object file"
    # torch's own headers may warn; ours (the source and the csrc/ headers it includes) must not
    ours = [line for line in run.stderr.splitlines() if str(CSRC) in line and "warning" in line.lower()]
    assert not ours, "nvcc warns about csrc/:\n" + "\n".join(ours)
