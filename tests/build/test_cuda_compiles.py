"""Compiles every CUDA source of the compiled ops (the ``.cu`` files of ``csrc/sources.txt``) for sm_90 (H100)
with nvcc, against the installed torch's headers, as torch's cpp_extension would build them, and reads the
blend kernels' PTX for what makes them fast and exact by construction: 128-bit loads and stores on the vector
path, no fused multiply-add, no hardware integer division.

Needs no GPU (and works with a CPU build of torch, whose include directory still ships the ATen/c10 CUDA
headers): it checks what the sources compile to, not what they compute. Skipped only when ``nvcc`` is not on
PATH. Each source is compiled once (``--keep`` leaves its PTX next to the object).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Build:
    returncode: int
    stdout: str
    stderr: str
    obj: Path
    ptx: Path


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """build(source) -> its Build. The first call starts nvcc on every source at once (they compile in
    parallel); each source is compiled once per module, its PTX kept (``--keep``) for the PTX tests."""
    nvcc = shutil.which("nvcc")
    running: dict[str, tuple[subprocess.Popen, Path]] = {}
    builds: dict[str, Build] = {}

    def start_all() -> None:
        for source in CUDA_SOURCES:
            path = ROOT / source
            out = tmp_path_factory.mktemp(path.stem)
            command = [*_nvcc_command(nvcc, path, out / (path.stem + ".o")), "--keep", "--keep-dir", str(out)]
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            running[source] = (proc, out)

    def compile_source(source: str) -> Build:
        if nvcc is None:
            pytest.skip(f"nvcc is not on PATH: cannot compile {source}")
        if not running:
            start_all()
        if source not in builds:
            proc, out = running[source]
            stdout, stderr = proc.communicate(timeout=600)
            stem = Path(source).stem
            builds[source] = Build(proc.returncode, stdout, stderr, out / (stem + ".o"), out / (stem + ".ptx"))
        return builds[source]

    yield compile_source
    for proc, _ in running.values():
        if proc.poll() is None:  # a test failed before waiting for it
            proc.kill()
            proc.wait()


def test_sources_list_cuda_files():
    assert CUDA_SOURCES, "csrc/sources.txt lists no .cu file"
    for source in CUDA_SOURCES:
        assert (ROOT / source).is_file(), f"csrc/sources.txt lists {source}, which does not exist"


@pytest.mark.parametrize("source", CUDA_SOURCES)
def test_cuda_source_compiles_for_sm90(source, build):
    run = build(source)
    assert run.returncode == 0, f"nvcc failed ({run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-8000:]}"
    assert run.obj.is_file() and run.obj.stat().st_size > 0, "nvcc reported success but wrote no object file"
    # torch's own headers may warn; ours (the source and the csrc/ headers it includes) must not
    ours = [line for line in run.stderr.splitlines() if str(CSRC) in line and "warning" in line.lower()]
    assert not ours, "nvcc warns about csrc/:\n" + "\n".join(ours)


# ---------------------------------------------------------------------------------------------------------
# The blend's PTX. Kernel entries are read by their mangled names: <kernel>I<scalar_t><acc_t><index>E, with
# index j (uint32_t, the 32-bit path) or m (uint64_t).
BLEND_SOURCE = "csrc/cuda/blend_regions_kernel.cu"
BLEND_KERNELS = ("blend_vector_kernel", "blend_strided_kernel", "blend_backward_vector_kernel",
                 "blend_backward_strided_kernel")  # fmt: skip
DTYPES = {"f": "float32", "d": "float64", "N3c104HalfE": "float16", "N3c108BFloat16E": "bfloat16"}
INDEX = {"j": "32-bit", "m": "64-bit"}
_ENTRY = re.compile(r"^(?:\.visible\s+|\.weak\s+)?\.entry\s+(\S+?)\(", re.M)
_KERNEL_NAMES, _DTYPE_CODES = "|".join(BLEND_KERNELS), "|".join(map(re.escape, DTYPES))
_NAME = re.compile(rf"\d({_KERNEL_NAMES})I({_DTYPE_CODES})[fd]([jm])E")

# a 16-byte global access: four 32-bit or two 64-bit lanes (ld.global.nc.v4.f32, ld.global.v4.u32, ...)
VECTOR_LOAD = re.compile(r"\bld\.global(?:\.nc)?(?:\.L\w+::\w+)*\.(?:v4\.[bfsu]32|v2\.[bfsu]64)\b")
VECTOR_STORE = re.compile(r"\bst\.global(?:\.\w+)*?\.(?:v4\.[bfsu]32|v2\.[bfsu]64)\b")
ANY_STORE = re.compile(r"\bst\.global\.\S+")
FMA = re.compile(r"\bfma\.")
UNROUNDED = re.compile(r"\b(?:add|sub|mul)\.f(?:32|64)\b")  # ptxas may contract these into an FMA; .rn never
INT_DIVISION = re.compile(r"\b(?:div|rem)\.[su](?:32|64)\b")


def _blend_entries(ptx: str) -> dict[tuple[str, str, str], str]:
    """(kernel, dtype, index width) -> PTX body of every blend kernel instantiation."""
    starts = [(m.start(), m.group(1)) for m in _ENTRY.finditer(ptx)]
    entries = {}
    for (start, name), (end, _) in zip(starts, [*starts[1:], (len(ptx), "")], strict=True):
        m = _NAME.search(name)
        if m:
            entries[(m.group(1), DTYPES[m.group(2)], INDEX[m.group(3)])] = ptx[start:end]
    return entries


@pytest.fixture(scope="module")
def blend_ptx(build) -> dict[tuple[str, str, str], str]:
    compiled = build(BLEND_SOURCE)
    if compiled.returncode != 0:
        pytest.fail(f"{BLEND_SOURCE} does not compile (see test_cuda_source_compiles_for_sm90)")
    entries = _blend_entries(compiled.ptx.read_text())
    expected = {(k, d, i) for k in BLEND_KERNELS for d in DTYPES.values() for i in INDEX.values()}
    assert set(entries) == expected, f"blend kernel instantiations differ: {sorted(set(entries) ^ expected)}"
    return entries


def test_blend_vector_path_moves_16_byte_vectors(blend_ptx):
    """Dense NCHW / channels_last: every element reaches memory through 128-bit loads and stores only."""
    for (kernel, dtype, index), body in blend_ptx.items():
        if "vector" not in kernel:
            continue
        where = f"{kernel} ({dtype}, {index} indices)"
        loads = VECTOR_LOAD.findall(body)
        assert len(loads) >= 2, f"{where}: expected 128-bit loads of both sources, found {loads}"
        stores = ANY_STORE.findall(body)
        assert stores and all(VECTOR_STORE.match(s) for s in stores), f"{where}: stores other than 128-bit: {stores}"


def test_blend_rounds_every_operation(blend_ptx):
    """Blends and gradients round each add and multiply as the reference does: no FMA, and no unrounded float
    op that ptxas could contract into one."""
    for (kernel, dtype, index), body in blend_ptx.items():
        where = f"{kernel} ({dtype}, {index} indices)"
        assert not FMA.search(body), f"{where}: fused multiply-add in the PTX"
        assert not UNROUNDED.findall(body), f"{where}: float ops without .rn: {set(UNROUNDED.findall(body))}"


def test_blend_indexes_without_hardware_division(blend_ptx):
    """Element -> cell and tile -> sample go through the magic-number Divider, on both index widths."""
    for (kernel, dtype, index), body in blend_ptx.items():
        found = INT_DIVISION.findall(body)
        assert not found, f"{kernel} ({dtype}, {index} indices): integer division in the PTX: {found}"
