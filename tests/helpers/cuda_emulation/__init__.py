"""The CUDA blend kernels (``csrc/cuda/blend_regions_kernel.cu``) built for the host, so their index math,
path choice and select / lerp logic run against the reference without a GPU (``build/test_cuda_emulated.py``).

The source is compiled as it is, with three mechanical rewrites: the c10 CUDA headers give way to ``shim.h``
(the CUDA built-ins on the host), ``kernel<<<grid, block, ...>>>(args)`` becomes a call that runs every thread
of every block in turn, and the ``TORCH_LIBRARY_IMPL`` block is dropped (the harness calls the engine's kernels,
``kBlendRegionsKernels``, directly). Sequential threads are exact for kernels whose threads never talk to each
other, as the blend's and its backward's; ``lam_eff_kernel``'s barriers are stubs and its output is not checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[3]
CSRC = ROOT / "csrc"
SHIM = Path(__file__).with_name("shim.h")

_HARNESS = """
#include "blend_regions_kernel.cpp"

#include <torch/extension.h>

namespace {

std::tuple<at::Tensor, at::Tensor> blend(const at::Tensor& x, const at::Tensor& regions, const at::Tensor& perm,
                                         const at::Tensor& lam, const at::Tensor& lam_label) {
  rmix_fast::BlendArgs args{x, regions, perm, lam, lam_label};
  // as rmix_fast::empty_blend_outputs (blend_regions.cpp, not linked here)
  rmix_fast::BlendOutputs out{at::empty_like(x), at::empty({x.size(0)}, x.options().dtype(at::kFloat))};
  rmix_fast::cuda::kBlendRegionsKernels.blend(args, out);
  return {out.mixed, out.lam_eff};
}

at::Tensor blend_backward(const at::Tensor& grad_out, const at::Tensor& regions, const at::Tensor& perm,
                          const at::Tensor& lam) {
  rmix_fast::BlendBackwardArgs args{grad_out, regions, perm, lam};
  at::Tensor grad_x = at::empty_like(grad_out);
  rmix_fast::cuda::kBlendRegionsKernels.blend_backward(args, grad_x);
  return grad_x;
}

std::vector<std::string> launches() { return std::exchange(emulated_launches, {}); }

void force_index64(bool force) { emulate_force_index64 = force; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("blend", &blend);
  m.def("blend_backward", &blend_backward);
  m.def("launches", &launches, "names of the kernels launched since the last call");
  m.def("force_index64", &force_index64, "take the 64-bit index path whatever the sizes");
}
"""


def _rewrite(pattern: str, replacement: str, text: str, expected: int | None, what: str) -> str:
    text, count = re.subn(pattern, replacement, text, flags=re.S)
    if count == 0 or (expected is not None and count != expected):
        raise AssertionError(f"cuda_emulation: cannot rewrite {what} ({count} matches); update this helper")
    return text


def emulated_sources() -> dict[str, str]:
    """The rewritten sources, by file name relative to the build's include directory."""
    utils = (CSRC / "cuda" / "kernel_utils.cuh").read_text()
    utils = _rewrite(r"#include <c10/cuda/[^>]+>\n", "", utils, None, "the c10 CUDA includes")
    utils = _rewrite(r'(#include "blend_regions.h"\n)', rf'\1#include "{SHIM}"\n', utils, 1, "the shim include")
    kernels = (CSRC / "cuda" / "blend_regions_kernel.cu").read_text()
    kernels = _rewrite(r"\nTORCH_LIBRARY_IMPL\(.*?\n}\n", "\n", kernels, 1, "the TORCH_LIBRARY_IMPL block")
    kernels = _rewrite(
        r"(\w+(?:<[^;()]*?>)?)<<<(.*?)>>>\(", r'emulate_launch(\2)("\1", &\1, ', kernels, None, "the launches"
    )
    kernels = _rewrite(
        r"(bool fits_index32\(int64_t \w+\) \{)", r"\1 if (emulate_force_index64) return false;", kernels, 1,
        "fits_index32",
    )  # fmt: skip
    return {
        "cuda/kernel_utils.cuh": utils,
        "blend_regions_kernel.cpp": kernels,
        "harness.cpp": _HARNESS,
    }


def build(build_dir: Path) -> ModuleType:
    """Builds the host build of the blend kernels in build_dir (reused there while the sources are unchanged)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    for name, text in emulated_sources().items():
        path = build_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:  # unchanged files keep their mtime: ninja reuses them
            path.write_text(text)
    return cpp_extension.load(
        name="rmix_fast_cuda_emulation",
        sources=[str(build_dir / "harness.cpp")],
        extra_include_paths=[str(build_dir), str(CSRC)],  # the rewritten cuda/kernel_utils.cuh comes first
        extra_cflags=["-std=c++20", "-O1", "-ffp-contract=off"],
        build_directory=str(build_dir),
        verbose=False,
    )
