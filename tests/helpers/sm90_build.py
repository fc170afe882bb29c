"""Builds every R-Mix Triton kernel for sm_90 (H100) on a machine without a GPU; run by
``tests/test_rmix_sm90_build.py`` as ``python -m tests.helpers.sm90_build`` with TRITON_INTERPRET unset.
Exit 77: this triton cannot build offline (no such API or no ptxas)."""

from __future__ import annotations

import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")

import triton
import triton.language as tl

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:
    print("this triton has no ASTSource/GPUTarget API")
    sys.exit(77)

from rmix_fast.ops._triton import blend_regions as blend_kernels
from rmix_fast.ops._triton import rmix as rmix_kernels
from rmix_fast.ops._triton._launch import LAYOUT_NCHW, LAYOUT_NHWC, LAYOUT_STRIDED

BUILT: list[str] = []
TARGET = GPUTarget("cuda", 90, 32)


def build(fn, pointers: dict, ints: list, consts: dict) -> None:
    sig = {**pointers, **dict.fromkeys(ints, "i64"), **dict.fromkeys(consts, "constexpr")}
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=TARGET)
    assert kernel.asm["cubin"], f"{fn.__name__}: empty cubin"
    BUILT.append(fn.__name__)


def build_saliency_kernels(acc: str, grid: int) -> None:
    ACC = getattr(tl, {"fp32": "float32", "fp64": "float64"}[acc])
    build(
        rmix_kernels.cell_saliency_partial_kernel,
        {"grad_ptr": "*bf16", "part_ptr": f"*{acc}"},
        ["stride_b", "stride_c", "stride_h", "stride_w"],
        {"C": 3, "W": 256, "P": grid, "CELL_H": 256 // grid, "CELL_W": 256 // grid, "ROWS_PER_PROG": 16,
         "N_SPLIT": 2, "BLOCK_R": 16, "BLOCK_W": 256, "BLOCK_P": max(2, grid), "ACC": ACC},
    )  # fmt: skip
    block_n = max(2, grid * grid)
    build(
        rmix_kernels.cell_threshold_kernel,
        {"part_ptr": f"*{acc}", "q_ptr": "*fp32", "sal_ptr": f"*{acc}", "mask_ptr": "*i8"},
        [],
        {"P": grid, "N_SPLIT": 2, "CELL_AREA": 49, "BLOCK_N": block_n, "BLOCK_J": max(2, min(block_n, 8192 // block_n)),
         "ACC": ACC},
    )  # fmt: skip


def build_blend_kernels(dtype: str, layout: int, from_mask: bool) -> None:
    """R-Mix's blend reads a 4x4 top mask; the region blend a pixel-exact 224x224 code map (the lam_eff
    count then loops over cells) with 64-bit codes."""
    CD = tl.float64 if dtype == "fp64" else tl.float32
    grid = {"GH": 4, "GW": 4} if from_mask else {"GH": 224, "GW": 224}
    codes = "*i8" if from_mask else "*i64"
    shape = {"C": 3, "H": 224, "W": 224, **grid, "LAYOUT": layout, "FROM_MASK": from_mask, "BLOCK": 1024, "CD": CD}
    build(
        blend_kernels.blend_kernel,
        {"x_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "code_ptr": codes, "perm_ptr": "*i64", "lam_ptr": "*fp32",
         "lam_eff_ptr": "*fp32"},
        ["sx_b", "sx_c", "sx_h", "sx_w", "so_b", "so_c", "so_h", "so_w"],
        {**shape, "BLOCK_N": 16 if from_mask else 4096},
    )  # fmt: skip
    build(
        blend_kernels.blend_backward_kernel,
        {"go_ptr": f"*{dtype}", "gx_ptr": f"*{dtype}", "code_ptr": codes, "perm_ptr": "*i64", "src_ptr": "*i64",
         "lam_ptr": "*fp32"},
        ["sg_b", "sg_c", "sg_h", "sg_w", "so_b", "so_c", "so_h", "so_w"],
        shape,
    )  # fmt: skip


def main() -> int:
    for acc in ("fp32", "fp64"):
        for grid in (1, 4, 64):
            build_saliency_kernels(acc, grid)
    for dtype in ("fp32", "bf16", "fp16", "fp64"):
        for layout in (LAYOUT_NCHW, LAYOUT_NHWC, LAYOUT_STRIDED):
            for from_mask in (True, False):
                build_blend_kernels(dtype, layout, from_mask)
    print(f"built {len(BUILT)} kernels for sm_90 with triton {triton.__version__}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:
        if "ptxas" in str(exc):
            print(f"no usable ptxas: {exc}")
            sys.exit(77)
        raise
