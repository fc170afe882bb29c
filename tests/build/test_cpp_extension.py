"""The compiled backend as a build artefact: it is built (or says why not), "auto" picks it on CPU, the
package works without it, its C++ op rejects bad input itself, its results do not depend on the thread
count, and the CMake build with its ctest executables passes.

The equivalence matrix against the reference runs for "cpp" in the backend-parametrized modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rmix_fast
from rmix_fast.ops._backends import resolve_backend
from tests.helpers.cases import check_against_reference, make_case

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
SKIPPED_BUILD = os.environ.get("RMIX_FAST_NO_EXT", "") not in ("", "0")
CPP_ON_CPU = rmix_fast.available_backends(CPU)["cpp"].available
needs_cpp = pytest.mark.skipif(not CPP_ON_CPU, reason="the 'cpp' backend is not built here (see test_extension_built)")


def test_extension_built_unless_skipped():
    """Fails when the build silently dropped the extension: only RMIX_FAST_NO_EXT=1 may leave it out."""
    info = rmix_fast.available_backends(CPU)["cpp"]
    if SKIPPED_BUILD:
        assert not info.available and "RMIX_FAST_NO_EXT" in info.reason
    else:
        assert info.available, f"the 'cpp' backend should be built: {info.reason}"


@needs_cpp
def test_auto_picks_cpp_on_cpu():
    assert resolve_backend("auto", CPU, 4) == "cpp"
    assert resolve_backend("auto", CPU, 64) == "cpp"  # no grid limit on CPU


def test_package_works_without_the_extension():
    """Make rmix_fast._C unfindable: "cpp" says why it is missing, everything else still runs."""
    script = """
import importlib.util, torch

find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "rmix_fast._C" else find_spec(name, *a)
import rmix_fast
info = rmix_fast.available_backends("cpu")["cpp"]
assert not info.available and "not built" in info.reason and "--no-build-isolation" in info.reason, info
x = torch.randn(4, 3, 8, 8)
mixed, lam_eff = rmix_fast.rmix(x, torch.randn_like(x), perm=torch.tensor([1, 0, 3, 2]), lam=0.5, q=0.5, grid=2)
assert mixed.shape == x.shape
try:
    rmix_fast.rmix(x, x, perm=torch.tensor([1, 0, 3, 2]), lam=0.5, q=0.5, grid=2, backend="cpp")
except ValueError as exc:
    assert "backend 'cpp' is unavailable on cpu" in str(exc), exc
else:
    raise AssertionError("backend='cpp' must raise when the extension is missing")
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


@needs_cpp
@pytest.mark.parametrize(
    "shape,grid", [((2, 3, 64, 64), 64), ((3, 3, 56, 84), 28), ((2, 3, 224, 224), 32), ((1, 3, 224, 224), 2)]
)
def test_large_grids_and_images(shape, grid):
    """Grids beyond the GPU backends' limit, one-pixel cells, and images big enough to split across threads."""
    check_against_reference("cpp", make_case(*shape, grid=grid, seed=40, device=CPU))


@needs_cpp
@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last", "strided"])
def test_thread_count_does_not_change_bits(x_layout):
    case = make_case(9, 3, 32, 32, grid=4, x_layout=x_layout, seed=41, device=CPU)
    x = case.x.detach().clone().requires_grad_()
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            x.grad = None
            mixed, lam_eff, mask = rmix_fast.rmix(x, case.grad, **case.kwargs(), backend="cpp", return_mask=True)
            mixed.backward(torch.ones_like(mixed))
            results.append((mixed.detach(), lam_eff, mask, x.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    for one, many in zip(*results, strict=True):
        assert torch.equal(one, many)


@needs_cpp
def test_cpp_op_checks_its_own_arguments():
    """Called directly (not through rmix_fast.rmix), the C++ op still raises ValueError/TypeError, never crashes."""
    op, backward = torch.ops.rmix_fast.rmix_cpp.default, torch.ops.rmix_fast.rmix_cpp_backward.default
    x = torch.randn(4, 3, 8, 8)
    perm, half = torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="x must be 4-D"):
        op(x[0], x[0], perm, half, half, 2, True)
    with pytest.raises(ValueError, match="lam must be a tensor of shape"):
        op(x, x, perm, half[:2], half, 2, True)
    with pytest.raises(TypeError, match="perm must be an integer tensor"):
        op(x, x, perm.float(), half, half, 2, True)
    with pytest.raises(ValueError, match="grid must be >= 1"):
        op(x, x, perm, half, half, 0, True)
    with pytest.raises(ValueError, match="q must lie in"):
        op(x, x, perm, half, torch.full((4,), -1.0), 2, True)
    op(x, x, torch.tensor([0, 0, 1, 2]), half, half, 2, False)  # validate=False trusts the caller's perm...
    with pytest.raises(ValueError, match="perm must hold indices"):  # ...but never reads out of bounds
        op(x, x, torch.tensor([0, 9, 1, 2]), half, half, 2, False)
    for bad_q in (1.5, -0.5, float("nan")):
        with pytest.raises(ValueError, match="q must lie in"):
            op(x, x, perm, half, torch.full((4,), bad_q), 2, False)
    with pytest.raises(ValueError, match="mask must be a"):
        backward(x, torch.ones(4, 3, 3, dtype=torch.bool), perm, half)


@needs_cpp
def test_label_weight_uses_float64_lam_like_the_reference():
    """lam_eff is computed from the caller's lam in float64 (not from its float32 blend copy)."""
    case = make_case(8, 3, 8, 8, grid=2, seed=42, device=CPU)
    lam = torch.full((8,), 0.3, dtype=torch.float64)  # 0.3 is not a float32 number
    _, lam_eff, mask = rmix_fast.rmix(case.x, case.grad, perm=case.perm, lam=lam, q=case.q, grid=2,
                                      backend="cpp", return_mask=True)  # fmt: skip
    assert torch.equal(
        lam_eff, rmix_fast.reference.region_label_weight(rmix_fast.reference.regions_from_mask(mask, case.perm), lam)
    )


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_build_and_ctest(tmp_path):
    """The CMake build compiles csrc/sources.txt against the installed torch and its ctest executables (one
    per csrc/tests/test_<op>.cpp) pass."""
    prefix = subprocess.run(
        [sys.executable, "-c", "import torch.utils; print(torch.utils.cmake_prefix_path)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    steps = [
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path), *generator, f"-DCMAKE_PREFIX_PATH={prefix}"],
        ["cmake", "--build", str(tmp_path), "--parallel", "2"],
        ["ctest", "--test-dir", str(tmp_path), "--output-on-failure"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(step)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert "100% tests passed" in done.stdout
    for test in sorted((ROOT / "csrc" / "tests").glob("test_*.cpp")):
        assert f" {test.stem} " in done.stdout, f"ctest did not run {test.stem}"
