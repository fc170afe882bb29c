"""Builds every Triton kernel for sm_90 (H100) on a machine without a GPU, as the JIT would build it, and
checks the PTX. Run by ``tests/build/test_triton_sm90.py`` as ``python -m tests.helpers.sm90_build`` with
TRITON_INTERPRET unset. Exit 77: this triton cannot build offline (no such API or no ptxas).

Each launch is planned by the library's own launchers (``plan_*``) from meta tensors (shapes, strides and
dtypes without memory), then specialised by Triton's own binder: integer arguments become i32 or i64 by
their values, pointers and integers get the divisibility attributes the JIT gives them, and the cache key
is the JIT's. So what is built and counted here is what a GPU would compile and cache, variant for variant.

Checks, each printed as one line the test reads:
* every kernel builds, for every dtype and layout;
* blend kernels: 128-bit loads and stores of the images on dense layouts, no FMA (bit-identical to the
  reference and the C++ kernels), 64-bit offsets for a strided view whose sample spans 2**31 elements;
* saliency kernels: no FMA;
* blend_sources kernels (AdAutoMix's blend): no FMA; 128-bit image loads and stores in the forward on
  dense layouts and in grad_x on NCHW; 64-bit offsets for the big view; one variant per (dtype, layout)
  for any batch size, scale and low-res map (grad_logits: per scale and map, for any batch size);
* one compiled variant per (dtype, layout) for 100 CutMix batches (their box-aligned grids differ) and
  for R-Mix's grids p in {2, 4} and batch sizes;
* SAGE's kernels: no FMA, 64-bit offsets for the big view, one variant per (dtype, layout) whatever the
  candidate count and the batch size.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")

import torch
import triton

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import compute_cache_key, create_function_from_signature
except ImportError as exc:
    print(f"this triton cannot specialise and build offline: {exc}")
    sys.exit(77)

from rmix_fast.mixers import CutMix
from rmix_fast.ops._triton import blend_regions as blend_kernels
from rmix_fast.ops._triton import blend_sources as sources_kernels
from rmix_fast.ops._triton import rmix as rmix_kernels
from rmix_fast.ops._triton import sage as sage_kernels
from rmix_fast.ops._triton._launch import Launch

TARGET = GPUTarget("cuda", 90, 32)
BACKEND = make_backend(TARGET)
META = torch.device("meta")
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
LAYOUTS = ("nchw", "nhwc", "strided")


@dataclass
class Built:
    name: str
    key: Any
    ptx: str


_BINDERS: dict[str, Any] = {}
_BUILT: dict[tuple[str, Any], Built] = {}


def specialise(launch: Launch) -> tuple[Any, tuple]:
    """The JIT's cache key of ``launch`` and what it compiles from: (key, (signature, constexprs, attrs, options))."""
    fn = launch.kernel
    if fn.__name__ not in _BINDERS:
        _BINDERS[fn.__name__] = create_function_from_signature(fn.signature, fn.params, BACKEND)
    kwargs = {**launch.constexprs, **launch.options}
    bound, specialization, options = _BINDERS[fn.__name__](*launch.args, **kwargs)
    key = compute_cache_key({}, specialization, options)
    options, signature, constexprs, attrs = fn._pack_args(BACKEND, kwargs, bound, specialization, options)
    return key, (signature, constexprs, attrs, options)


def build(launch: Launch) -> Built:
    """Compiles ``launch`` to a cubin for sm_90 (once per JIT cache key)."""
    key, (signature, constexprs, attrs, options) = specialise(launch)
    name = launch.kernel.__name__
    if (name, key) not in _BUILT:
        kernel = triton.compile(
            ASTSource(launch.kernel, signature, constexprs, attrs), target=TARGET, options=options.__dict__
        )
        assert kernel.asm["cubin"], f"{name}: empty cubin"
        _BUILT[(name, key)] = Built(name, key, kernel.asm["ptx"])
    return _BUILT[(name, key)]


def images(B: int, C: int, H: int, W: int, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """Meta (B, C, H, W) images in a layout: dense NCHW, dense NHWC, or every other row of a taller tensor."""
    if layout == "nchw":
        return torch.empty((B, C, H, W), dtype=dtype, device=META)
    if layout == "nhwc":
        return torch.empty((B, C, H, W), dtype=dtype, device=META).contiguous(memory_format=torch.channels_last)
    return torch.empty((B, C, 2 * H, W), dtype=dtype, device=META)[:, :, ::2]


def params(B: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(perm, lam, lam_eff) as the launchers pass them."""
    return (torch.empty(B, dtype=torch.int64, device=META), torch.empty(B, device=META),
            torch.empty(B, device=META))  # fmt: skip


def plan_blend_pair(x: torch.Tensor, codes: torch.Tensor, gh: int, gw: int, from_mask: bool) -> tuple[Launch, Launch]:
    perm, lam, lam_eff = params(x.shape[0])
    out = torch.empty_like(x)
    return (
        blend_kernels.plan_blend(x, out, lam_eff, codes, perm, lam, gh, gw, from_mask),
        blend_kernels.plan_blend_backward(x, out, codes, perm, perm, lam, gh, gw, from_mask),
    )


def plan_saliency_pair(grad: torch.Tensor, grid: int, q_dtype: torch.dtype = torch.float32) -> tuple[Launch, Launch]:
    B, _, H, W = grad.shape
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    n_split = triton.cdiv(H // grid, rmix_kernels.ROWS_PER_PROGRAM)
    partials = torch.empty((B, grid, n_split, W), dtype=acc, device=META)
    cells = torch.empty((B, grid * grid), dtype=acc, device=META)
    mask = torch.empty((B, grid * grid), dtype=torch.int8, device=META)
    q = torch.empty(B, dtype=q_dtype, device=META)
    return (
        rmix_kernels.plan_saliency(grad, partials, grid),
        rmix_kernels.plan_threshold(partials, q, cells, mask, grid, (H // grid) * (W // grid)),
    )


def count(pattern: str, ptx: str) -> int:
    return len(re.findall(pattern, ptx))


FMA = r"\bfma\.rn\.f(32|64)\b"
VECTOR_LOAD = {2: r"ld\.global(\.\w+)*\.v4\.b32", 4: r"ld\.global(\.\w+)*\.v4\.b32", 8: r"ld\.global(\.\w+)*\.v2\.b64"}
VECTOR_STORE = {2: r"st\.global(\.\w+)*\.v4\.b32", 4: r"st\.global(\.\w+)*\.v4\.b32", 8: r"st\.global(\.\w+)*\.v2\.b64"}


def check_blend_kernels() -> None:
    """Every blend variant at ImageNet size: builds; no FMA; vector loads and stores on dense layouts."""
    for dtype in DTYPES:
        size = torch.empty((), dtype=dtype).element_size()
        for layout in LAYOUTS:
            for from_mask in (True, False):
                x = images(256, 3, 224, 224, dtype, layout)
                codes = torch.empty((256, 16) if from_mask else (256, 7, 4), dtype=torch.int8, device=META)
                grid = (4, 4) if from_mask else (7, 4)
                for launch in plan_blend_pair(x, codes, *grid, from_mask):
                    built = build(launch)
                    what = f"{built.name} {dtype} {layout}{' from_mask' if from_mask else ''}"
                    assert count(FMA, built.ptx) == 0, f"{what}: FMA in the PTX"
                    if layout != "strided":
                        assert count(VECTOR_LOAD[size], built.ptx) >= 2, f"{what}: no 128-bit loads"
                        assert count(VECTOR_STORE[size], built.ptx) >= 1, f"{what}: no 128-bit stores"
    print("blend kernels: 128-bit loads and stores on dense layouts, no FMA")


def check_wide_offsets() -> None:
    """A permuted view of a (3, 4096, 512, 512) tensor: one sample spans 3 * 2**30 elements, beyond 32 bits.
    The strided path must multiply strides in 64 bits there (and only there)."""
    base = torch.empty((3, 4096, 512, 512), dtype=torch.bfloat16, device=META)
    view = base.permute(1, 0, 2, 3)
    codes = torch.empty((4096, 4, 4), dtype=torch.int8, device=META)
    wide, wide_bwd = plan_blend_pair(view, codes, 4, 4, from_mask=False)
    assert wide.constexprs["WIDE"] and wide_bwd.constexprs["WIDE"], "64-bit offsets not chosen for the big view"
    narrow, _ = plan_blend_pair(images(256, 3, 224, 224, torch.bfloat16, "strided"), codes[:256], 4, 4, False)
    assert not narrow.constexprs["WIDE"], "64-bit offsets chosen where 32 bits suffice"
    for launch in (wide, wide_bwd):
        ptx = build(launch).ptx
        assert count(r"\bmul\.wide\.[su]32\b|\bmul\.lo\.s64\b|\bmad\.wide\.[su]32\b", ptx) > 0, "no 64-bit offsets"
    grad_wide, _ = plan_saliency_pair(view, 4)
    assert grad_wide.constexprs["WIDE"], "saliency: 64-bit offsets not chosen for the big view"
    build(grad_wide)
    print("offsets: 64-bit for a sample spanning 2**31 elements, 32-bit otherwise")


def check_saliency_kernels() -> None:
    for dtype in DTYPES:
        for layout in LAYOUTS:
            for grid in (1, 4, 32):
                for launch in plan_saliency_pair(images(64, 3, 224, 224, dtype, layout), grid):
                    built = build(launch)
                    assert count(FMA, built.ptx) == 0, f"{built.name} {dtype} {layout} p={grid}: FMA in the PTX"
    for launch in plan_saliency_pair(images(8, 3, 256, 256, torch.float32, "nchw"), 64):  # the largest grid
        build(launch)
    print("saliency kernels: no FMA")


def plan_sources(
    x: torch.Tensor, sources: int = 2, scale: int = 16, mode: str = "bilinear", normalize: str = "softmax",
    logits_dtype: torch.dtype = torch.float32,
) -> dict[str, Launch]:  # fmt: skip
    """The four blend_sources launches (forward, inverse, grad_x, grad_logits) for images ``x``."""
    B, _, H, W = x.shape
    logits = torch.empty((B, sources, H // scale, W // scale), dtype=logits_dtype, device=META)
    index = torch.empty((sources, B), dtype=torch.int64, device=META)
    inverse = torch.empty((sources, B), dtype=torch.int32, device=META)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    scratch = torch.empty((B, sources, H * W), dtype=acc, device=META)
    out = torch.empty_like(x)
    args = (scale, mode, normalize)
    return {
        "forward": sources_kernels.plan_forward(x, out, index, logits, *args),
        "inverse": sources_kernels.plan_inverse(index, inverse),
        "grad_x": sources_kernels.plan_grad_x(x, x, out, scratch, inverse, logits, *args),
        "grad_logits": sources_kernels.plan_grad_logits(scratch, logits, torch.empty_like(logits), *args, H, W),
    }


def check_sources_kernels() -> None:
    """blend_sources at ImageNet size (14 x 14 logits, scale 16): builds, no FMA; 128-bit image loads and
    stores in the forward on dense layouts (channels_last walks interleaved elements) and in grad_x on
    NCHW (grad_x walks channels_last pixel by pixel: its dW sums a pixel's channels); the 64-bit path."""
    for dtype in DTYPES:
        size = torch.empty((), dtype=dtype).element_size()
        for layout in LAYOUTS:
            plans = plan_sources(images(256, 3, 224, 224, dtype, layout))
            if dtype not in (torch.float32, torch.float64) or layout != "nchw":
                del plans["grad_logits"]  # it reads the scratch and the logits, not the images
            for part, launch in plans.items():
                built = build(launch)
                what = f"{built.name} {dtype} {layout}"
                assert count(FMA, built.ptx) == 0, f"{what}: FMA in the PTX"
                if (part == "forward" and layout != "strided") or (part == "grad_x" and layout == "nchw"):
                    assert count(VECTOR_LOAD[size], built.ptx) >= 2, f"{what}: no 128-bit loads"
                    assert count(VECTOR_STORE[size], built.ptx) >= 1, f"{what}: no 128-bit stores"
    x = images(64, 3, 224, 224, torch.bfloat16, "nhwc")
    variants = [(1, "nearest", "none", torch.float64), (3, "bilinear", "none", torch.bfloat16),
                (3, "nearest", "softmax", torch.float16)]  # fmt: skip
    for sources, mode, normalize, logits_dtype in variants:
        for launch in plan_sources(x, sources, 8, mode, normalize, logits_dtype).values():
            assert count(FMA, build(launch).ptx) == 0, f"{launch.kernel.__name__} N={sources} {mode}: FMA in the PTX"
    # float64 softmax weights: tl.exp is libdevice's exp there, whose own polynomial is FMA (an accurate exp,
    # not a contracted a * b + c of ours), so those variants are only built
    for launch in plan_sources(x, 2, 8, "bilinear", "softmax", torch.float64).values():
        build(launch)
    view = torch.empty((3, 4096, 512, 512), dtype=torch.bfloat16, device=META).permute(1, 0, 2, 3)
    wide = plan_sources(view, scale=32)
    narrow = plan_sources(images(256, 3, 224, 224, torch.bfloat16, "strided"))
    for part in ("forward", "grad_x"):
        assert wide[part].constexprs["WIDE"], f"blend_sources {part}: 64-bit offsets not chosen for the big view"
        assert not narrow[part].constexprs["WIDE"], f"blend_sources {part}: 64-bit offsets chosen needlessly"
        ptx = build(wide[part]).ptx
        assert count(r"\bmul\.wide\.[su]32\b|\bmul\.lo\.s64\b|\bmad\.wide\.[su]32\b", ptx) > 0, "no 64-bit offsets"
    print("blend_sources kernels: 128-bit image loads and stores where dense, 64-bit offsets where needed, no FMA")


def cutmix_grids(batches: int = 100, size: int = 224) -> list[tuple[int, int]]:
    """The region grids CutMix draws for ``batches`` batches of ``size`` x ``size`` images."""
    mixer = CutMix(10, generator=torch.Generator().manual_seed(0))
    lam = torch.full((1,), 0.5)
    grids = []
    for _ in range(batches):
        lam = mixer.draw_lam(1)
        regions, _ = mixer.draw_regions(lam, size, size, torch.device("cpu"))
        grids.append(tuple(regions.shape[1:]))
    return grids


def check_variants() -> None:
    """One JIT variant per kernel per (dtype, layout), whatever the grid, the draw or the batch size."""
    grids = cutmix_grids()
    for dtype, layout in [(torch.float32, "nchw"), (torch.bfloat16, "nhwc")]:
        keys: dict[str, set] = {}
        for B, (gh, gw) in zip([64, 64, 37] * len(grids), grids, strict=False):
            codes = torch.empty((B, gh, gw), dtype=torch.int8, device=META)
            for launch in plan_blend_pair(images(B, 3, 224, 224, dtype, layout), codes, gh, gw, False):
                keys.setdefault(launch.kernel.__name__, set()).add(specialise(launch)[0])
        counts = {name: len(k) for name, k in keys.items()}
        assert set(counts.values()) == {1}, f"CutMix {dtype} {layout}: variants {counts}"
    print(
        f"cutmix: {len(set(grids))} distinct grids in {len(grids)} batches -> 1 variant per kernel per (dtype, layout)"
    )
    for dtype, layout in [(torch.float32, "nchw"), (torch.bfloat16, "nhwc")]:
        keys = {}
        for B in (64, 37):
            for grid in (2, 4):
                x = images(B, 3, 224, 224, dtype, layout)
                mask = torch.empty((B, grid * grid), dtype=torch.int8, device=META)
                for launch in (*plan_saliency_pair(x, grid), *plan_blend_pair(x, mask, grid, grid, True)):
                    keys.setdefault(launch.kernel.__name__, set()).add(specialise(launch)[0])
        counts = {name: len(k) for name, k in keys.items()}
        assert set(counts.values()) == {1}, f"R-Mix {dtype} {layout}: variants {counts}"
    print("rmix: grids 2 and 4, batches 64 and 37 -> 1 variant per kernel per (dtype, layout)")
    for dtype, layout in [(torch.float32, "nchw"), (torch.bfloat16, "nhwc")]:
        keys = {}
        for B in (64, 37):
            for scale in (8, 16, 32):  # low-res maps 28 x 28, 14 x 14, 7 x 7
                for part, launch in plan_sources(images(B, 3, 224, 224, dtype, layout), scale=scale).items():
                    keys.setdefault((part, scale if part == "grad_logits" else 0), set()).add(specialise(launch)[0])
        counts = {name: len(k) for name, k in keys.items()}
        assert set(counts.values()) == {1}, f"blend_sources {dtype} {layout}: variants {counts}"
    print("blend_sources: scales 8, 16, 32, batches 64 and 37 -> 1 variant per kernel per (dtype, layout)")


def plan_sage(x: torch.Tensor, grad: torch.Tensor, K: int) -> list[Launch]:
    """SAGE's five launches (four forward, one backward) as its launchers plan them."""
    B, _, H, W = x.shape
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    maps = torch.empty((B, H, W), dtype=acc, device=META)
    perm, lam = torch.empty(B, dtype=torch.int64, device=META), torch.empty(B, dtype=acc, device=META)
    offsets = torch.empty((K, 2), dtype=torch.int64, device=META)
    scores = torch.empty((B, K), dtype=acc, device=META)
    taps = torch.empty(5, dtype=acc, device=META)
    shift = torch.empty((B, 2), dtype=torch.int64, device=META)
    out = torch.empty_like(x)
    return [
        sage_kernels.plan_saliency(grad, maps),
        sage_kernels.plan_blur(maps, taps, maps),
        sage_kernels.plan_search(maps, perm, lam, offsets, scores),
        sage_kernels.plan_blend(x, out, maps, scores, perm, lam, offsets, maps, lam, shift),
        sage_kernels.plan_backward(x, out, maps, perm, shift),
    ]


def check_sage_kernels() -> None:
    """Every SAGE kernel for every dtype and layout at CIFAR and ImageNet sizes: builds, no FMA; 64-bit
    offsets for the big view (and only there); one variant per (dtype, layout) over K and B."""
    for dtype in DTYPES:
        for layout in LAYOUTS:
            for B, H, W, K in ((100, 32, 32, 39), (256, 224, 224, 1998)):
                for launch in plan_sage(images(B, 3, H, W, dtype, layout), images(B, 3, H, W, dtype, layout), K):
                    built = build(launch)
                    assert count(FMA, built.ptx) == 0, f"{built.name} {dtype} {layout} {H}x{W}: FMA in the PTX"
    view = torch.empty((3, 4096, 512, 512), dtype=torch.bfloat16, device=META).permute(1, 0, 2, 3)
    wide = plan_sage(view, view, 39)
    for launch in (wide[0], wide[3], wide[4]):
        assert launch.constexprs["WIDE"], f"{launch.kernel.__name__}: 64-bit offsets not chosen for the big view"
        ptx = build(launch).ptx
        assert count(r"\bmul\.wide\.[su]32\b|\bmul\.lo\.s64\b|\bmad\.wide\.[su]32\b", ptx) > 0, "no 64-bit offsets"
    narrow = plan_sage(*(images(256, 3, 224, 224, torch.bfloat16, "strided"),) * 2, 39)
    assert not any(launch.constexprs.get("WIDE") for launch in narrow), "64-bit offsets where 32 bits suffice"
    for dtype, layout in [(torch.float32, "nchw"), (torch.bfloat16, "nhwc")]:
        keys: dict[str, set] = {}
        for B, K in ((100, 39), (100, 40), (37, 1), (64, 961)):
            x = images(B, 3, 32, 32, dtype, layout)
            for launch in plan_sage(x, x, K):
                keys.setdefault(launch.kernel.__name__, set()).add(specialise(launch)[0])
        counts = {name: len(k) for name, k in keys.items()}
        assert set(counts.values()) == {1}, f"SAGE {dtype} {layout}: variants {counts}"
    print("sage kernels: no FMA, 64-bit offsets for the big view, 1 variant per kernel per (dtype, layout)")


def main() -> int:
    check_blend_kernels()
    check_wide_offsets()
    check_saliency_kernels()
    check_sources_kernels()
    check_variants()
    check_sage_kernels()
    names = Counter(built.name for built in _BUILT.values())
    print(f"built {len(_BUILT)} kernels for sm_90 with triton {triton.__version__}: {dict(sorted(names.items()))}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:
        if "ptxas" in str(exc):
            print(f"no usable ptxas: {exc}")
            sys.exit(77)
        raise
