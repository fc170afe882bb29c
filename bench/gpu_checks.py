"""The prepared GPU checks of issue 14: probes that only a GPU can answer, each in its own process.

    python bench/gpu_checks.py --device cuda --out "$OUT/gpu-checks.json"     # what gpu_session.sh runs
    python bench/gpu_checks.py --device cpu --small                            # self-test of the logic, seconds
    python bench/gpu_checks.py --probes ties bit_exact --backends triton      # a subset

Probes (every backend that runs on the device, ``rmix_fast.available_backends``):

* ``param_views``: lam / q as 0-d tensors, as ``t.expand(B)`` of a 0-d and as strided views (``lam2d[:, 0]``),
  perm as a strided view: ``rmix`` and ``blend_regions`` forward (mixed, lam_eff, mask) and backward equal the
  "reference" backend run on the same device tensors (per-dtype tolerance; whether bit-equal is recorded);
* ``bit_exact``: float32 / bfloat16 / float16 / float64, NCHW and channels_last: the blend's mixed, lam_eff and
  grad w.r.t. x are bit-identical (``torch.equal``) to the CPU reference
  (``reference.blend_regions_forward`` / ``_backward``) for the same codes; for ``rmix`` the codes come from the
  backend's own mask (``regions_from_mask``);
* ``ties``: a 224x224 gradient that is one 56x56 cell pattern tiled 4x4, grid 4, q = 0.5: every cell ties at the
  threshold, so the mask must be all True (B = 1 and 64, float32 and bfloat16, NCHW and channels_last);
* ``launch_limits``: B = 100,000 images of 1x2x2 (Mixup's 1x1 map, a 2x2 code map, R-Mix grids 1 and 2), forward
  and backward against the reference; a 1024x3x512x512 bfloat16 batch and a permuted view of a
  (3, 4096, 512, 512) bfloat16 tensor (channel offsets past 2**31 elements), the last sample checked against the
  CPU reference of a two-sample batch; cases that do not fit in free memory are skipped, not failed;
* ``determinism``: the same call twice gives ``torch.equal`` outputs, forward and backward;
* ``sync_free``: a whole Mixup / CutMix / R-Mix step (``input_gradient`` where the mixer needs it, the mixer,
  the soft-target loss, backward, optimizer step) under ``torch.cuda.set_sync_debug_mode("error")``: which call
  syncs, and where in rmix_fast (CUDA only);
* ``recompiles``: 30 CutMix batches at 224² (B = 64, float32, NCHW and channels_last) with an empty Triton cache:
  the first batch's time, the others', and the compiled variants of every Triton kernel of rmix_fast (found
  among the imported rmix_fast modules) after each batch; it fails if a batch after the first compiles.

Each probe runs in a child process with its own time limit (an illegal memory access poisons that process's
CUDA context, not the others'); ``--budget`` bounds the whole run. Probes that share nothing run side by side
(``--jobs``: their Triton compiles overlap on the CPU cores); the memory-heavy and the timed ones run alone. The
JSON (device, versions, commit; per probe its status ``passed`` / ``failed`` / ``error`` / ``skipped``, seconds
and details) is rewritten after every probe, and one line per probe is printed as it ends.

On the CPU (``--device cpu``) the Triton backend runs in the interpreter (``TRITON_INTERPRET=1`` is set before
rmix_fast is imported; it converts float32 to bfloat16 by truncation where a GPU rounds, so bfloat16 bit-exactness
is not asked of it); ``--small`` shrinks every size so the self-test takes seconds. The commit comes from git, or
from ``RMIX_FAST_COMMIT`` where the checkout has no .git (``common.environment``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


def _device_argument(argv: list[str]) -> str:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return pre.parse_known_args(argv)[0].device


# The interpreter is chosen when rmix_fast's Triton kernels are decorated, at import: decide before importing it.
if _device_argument(sys.argv[1:]) == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import rmix_fast  # noqa: E402
from rmix_fast import reference  # noqa: E402

SCHEMA = 1
STATUSES = ("passed", "failed", "error", "skipped")
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
# (rtol, atol) of the pixels where a probe is about addressing, not rounding: the tests' tolerances (an FMA on a
# GPU, or the interpreter's float32 -> half conversion, moves a blended value by an ulp; copies stay exact).
TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-6, 2e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}
LAM_EFF_TOL = (1e-6, 1e-7)
INTERPRETER_BF16 = "the Triton interpreter converts float32 to bfloat16 by truncation (a GPU rounds to nearest)"


# ------------------------------------------------------------------------------------- recording checks


class PoisonedContext(RuntimeError):
    """A CUDA error that leaves the process's context unusable: the probe stops."""


@dataclass
class Recorder:
    """The checks of one probe, written to ``path`` after each (a probe cut short keeps what it checked)."""

    path: Path | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def check(self, case: str, ok: bool, **details: Any) -> bool:
        self.checks.append({"case": case, "ok": bool(ok), **details})
        self.save()
        return bool(ok)

    def skip(self, case: str, reason: str) -> None:
        self.skipped.append({"case": case, "reason": reason})
        self.save()

    def note(self, key: str, value: Any) -> None:
        self.info[key] = value
        self.save()

    def details(self) -> dict[str, Any]:
        return {"checks": self.checks, "skipped": self.skipped, **self.info}

    def save(self) -> None:
        if self.path is not None:
            write_json(self.path, self.details())

    @contextmanager
    def case(self, name: str, *, free: bool = False) -> Iterator[None]:
        """Runs one case: out of memory skips it, any other exception fails it; a CUDA context left unusable
        ends the probe (``PoisonedContext``). ``free``: give cached device memory back afterwards."""
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            self.skip(name, "out of memory")
        except Exception as exc:
            text = str(exc).strip()
            self.check(name, False, error=f"{type(exc).__name__}: {text[:1500]}")
            if not device_usable():
                raise PoisonedContext(
                    f"{name}: {type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
                ) from exc
        finally:
            if free:
                free_memory()


def device_usable() -> bool:
    """False when the CUDA context is poisoned (an illegal memory access, a device-side assert): every later
    call would fail too. A launch the driver refused (too large a grid) leaves it usable."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return True
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() == 2.0
    except Exception:
        return False


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def compare(got: torch.Tensor, want: torch.Tensor, *, exact: bool = False, tol: tuple[float, float] | None = None):
    """(ok, details) of ``got`` against ``want``, on the CPU: ``exact`` asks ``torch.equal``; otherwise the dtype's
    tolerance (or ``tol``). Details: whether bit-equal, how many elements differ, the largest difference."""
    got, want = got.detach().cpu(), want.detach().cpu()
    if got.shape != want.shape or got.dtype != want.dtype:
        return False, {"error": f"got {tuple(got.shape)} {got.dtype}, want {tuple(want.shape)} {want.dtype}"}
    equal = torch.equal(got, want)
    details: dict[str, Any] = {"bit_equal": equal}
    if not equal:
        details["n_diff"] = int((got != want).sum())
        if got.is_floating_point():
            details["max_abs_diff"] = float((got.double() - want.double()).abs().max())
    if exact or not got.is_floating_point():
        return equal, details
    rtol, atol = tol or TOL[got.dtype]
    return equal or torch.allclose(got.double(), want.double(), rtol=rtol, atol=atol), details


def check_all(rec: Recorder, case: str, pairs: dict[str, tuple], *, exact: bool = False) -> bool:
    """One record for several outputs: ok when each (got, want[, tol]) pair is."""
    ok, details = True, {}
    for name, pair in pairs.items():
        got, want, *tol = pair
        one_ok, one = compare(got, want, exact=exact, tol=tol[0] if tol else None)
        ok &= one_ok
        details[name] = one
    return rec.check(case, ok, **details)


# ------------------------------------------------------------------------------------------- the inputs


@dataclass
class Context:
    device: torch.device
    small: bool
    backends: list[str]  # every backend that runs on the device, "reference" first
    dtypes: list[str]
    interpreted: frozenset[str] = frozenset()  # backends that run in the Triton interpreter

    @property
    def kernels(self) -> list[str]:
        return [b for b in self.backends if b != "reference"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(shape, dtype, layout: str, device, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=LAYOUTS[layout]).to(device)


def separated_grad(shape, p: int, dtype, layout: str, device, g: torch.Generator) -> torch.Tensor:
    """A gradient whose p x p cell saliencies are 1..p² in random order per sample (1 % pixel noise): far
    apart, so every backend ranks the cells alike and masks can be compared exactly."""
    B, _, H, W = shape
    levels = torch.argsort(torch.rand(B, p * p, generator=g), dim=1).to(torch.float32).add(1).view(B, 1, p, p)
    levels = levels.repeat_interleave(H // p, dim=2).repeat_interleave(W // p, dim=3)
    noise = 1 + 0.01 * torch.randn(shape, generator=g)
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return (levels * noise * sign).to(dtype).contiguous(memory_format=LAYOUTS[layout]).to(device)


def codes(B: int, gh: int, gw: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 3, (B, gh, gw), generator=g).to(torch.int8)


def levels(B: int, g: torch.Generator) -> torch.Tensor:
    """(B,) float32 in [0, 1] with 0, 1 and 0.5 (both branches of the lerp) among them."""
    t = torch.rand(B, generator=g)
    t[: min(B, 3)] = torch.tensor([0.0, 1.0, 0.5])[: min(B, 3)]
    return t


def run_op(op: str, backend: str, x: torch.Tensor, go: torch.Tensor, **kw: Any) -> dict[str, torch.Tensor]:
    """One forward and backward of ``rmix`` or ``blend_regions``: mixed, lam_eff, (mask), grad w.r.t. x."""
    x = x.detach().requires_grad_(True)
    if op == "rmix":
        mixed, lam_eff, mask = rmix_fast.rmix(x, kw["grad"], perm=kw["perm"], lam=kw["lam"], q=kw["q"],
                                              grid=kw["grid"], backend=backend, return_mask=True)  # fmt: skip
    else:
        mixed, lam_eff = rmix_fast.blend_regions(x, perm=kw["perm"], lam=kw["lam"], regions=kw["regions"],
                                                 backend=backend)  # fmt: skip
        mask = None
    mixed.backward(go)
    out = {"mixed": mixed.detach(), "lam_eff": lam_eff, "grad_x": x.grad}
    if mask is not None:
        out["mask"] = mask
    return out


# ------------------------------------------------------------------------------------------- the probes


def probe_param_views(ctx: Context, rec: Recorder) -> None:
    """lam / q / perm as 0-d, expanded and strided tensors: every backend equals the reference on them."""
    B, C, H, W, p = (4, 2, 8, 8, 2) if ctx.small else (8, 3, 32, 32, 4)
    dev, g = ctx.device, gen(1)
    x = images((B, C, H, W), torch.float32, "NCHW", dev, g)
    grad = separated_grad((B, C, H, W), p, torch.float32, "NCHW", dev, g)
    go = images((B, C, H, W), torch.float32, "NCHW", dev, g)
    regions = codes(B, p, p, g).to(dev)
    perm = torch.randperm(B, generator=g).to(dev)
    lam2d = torch.stack([levels(B, g), torch.rand(B, generator=g)], dim=1).to(dev)
    q2d = torch.stack([levels(B, g), torch.rand(B, generator=g)], dim=1).to(dev)
    perm2d = torch.stack([perm, perm.flip(0)], dim=1)
    forms = {
        "0-d": (torch.tensor(0.3, device=dev), torch.tensor(0.5, device=dev), perm),
        "expanded": (torch.tensor(0.3, device=dev).expand(B), torch.tensor(0.5, device=dev).expand(B), perm),
        "strided": (lam2d[:, 0], q2d[:, 0], perm2d[:, 0]),
    }
    rec.note("forms", {k: {"lam_stride": v[0].stride(), "q_stride": v[1].stride(), "perm_stride": v[2].stride()}
                       for k, v in forms.items()})  # fmt: skip
    for op in ("rmix", "blend_regions"):
        for form, (lam, q, pm) in forms.items():
            kw = {"grad": grad, "perm": pm, "lam": lam, "q": q, "grid": p, "regions": regions}
            want = None
            for backend in ctx.kernels:
                name = f"{backend} {op} {form}"
                with rec.case(name):
                    if want is None:
                        want = run_op(op, "reference", x, go, **kw)
                    got = run_op(op, backend, x, go, **kw)
                    check_all(rec, name, {k: (got[k], want[k], *([LAM_EFF_TOL] if k == "lam_eff" else []))
                                          for k in want})  # fmt: skip


def probe_bit_exact(ctx: Context, rec: Recorder) -> None:
    """Per backend, dtype and layout: the blend of the same codes is bit for bit the CPU reference's."""
    B, C, H, W, p = (3, 2, 8, 8, 2) if ctx.small else (8, 3, 32, 32, 4)
    dev = ctx.device
    for dtype_name in ctx.dtypes:
        dtype = DTYPES[dtype_name]
        for layout in LAYOUTS:
            g = gen(2)
            x = images((B, C, H, W), dtype, layout, dev, g)
            grad = separated_grad((B, C, H, W), p, dtype, layout, dev, g)
            go = images((B, C, H, W), dtype, layout, dev, g)
            perm_cpu, lam_cpu, q = torch.randperm(B, generator=g), levels(B, g), torch.rand(B, generator=g)
            regions_cpu = codes(B, p, p, g)
            perm, lam = perm_cpu.to(dev), lam_cpu.to(dev)
            x_cpu, go_cpu = x.cpu(), go.cpu()
            for backend in ctx.backends:
                for op in ("blend_regions", "rmix"):
                    name = f"{backend} {op} {dtype_name} {layout}"
                    if backend in ctx.interpreted and dtype == torch.bfloat16:
                        rec.skip(name, INTERPRETER_BF16)
                        continue
                    with rec.case(name):
                        kw = {"grad": grad, "perm": perm, "lam": lam, "q": q.to(dev), "grid": p,
                              "regions": regions_cpu.to(dev)}  # fmt: skip
                        got = run_op(op, backend, x, go, **kw)
                        regions = regions_cpu
                        if op == "rmix":
                            regions = rmix_fast.regions_from_mask(got["mask"], perm).cpu()
                        want_mixed, want_lam_eff = reference.blend_regions_forward(x_cpu, regions, perm_cpu, lam_cpu)
                        want_grad = reference.blend_regions_backward(go_cpu, regions, perm_cpu, lam_cpu)
                        check_all(
                            rec,
                            f"{name} forward",
                            {"mixed": (got["mixed"], want_mixed), "lam_eff": (got["lam_eff"], want_lam_eff)},
                            exact=True,
                        )
                        check_all(rec, f"{name} backward", {"grad_x": (got["grad_x"], want_grad)}, exact=True)


def probe_ties(ctx: Context, rec: Recorder) -> None:
    """Every cell's gradient is the same pattern: all cells tie at the q = 0.5 threshold, all must be top."""
    size, cell, p = (16, 4, 4) if ctx.small else (224, 56, 4)
    batches = (1, 4) if ctx.small else (1, 64)
    dev = ctx.device
    for backend in ctx.backends:
        for B in batches:
            for dtype_name in ("float32", "bfloat16"):
                dtype = DTYPES[dtype_name]
                for layout in LAYOUTS:
                    name = f"{backend} B={B} {dtype_name} {layout}"
                    with rec.case(name):
                        g = gen(3)
                        pattern = torch.randn(B, 3, cell, cell, generator=g)
                        grad = pattern.repeat(1, 1, p, p).to(dtype).contiguous(memory_format=LAYOUTS[layout]).to(dev)
                        x = images((B, 3, size, size), dtype, layout, dev, g)
                        perm = torch.randperm(B, generator=g).to(dev)
                        out = rmix_fast.rmix(x, grad, perm=perm, lam=0.3, q=0.5, grid=p, backend=backend,
                                             return_mask=True)  # fmt: skip
                        top = out[2].cpu()
                        rec.check(name, bool(top.all()), cells_not_top=int((~top).sum()), cells=top.numel(),
                                  samples_not_all_top=int((~top.flatten(1).all(1)).sum()))  # fmt: skip


def _last_sample_checks(rec: Recorder, name: str, got: dict, x, go, regions, perm_cpu, lam_cpu) -> None:
    """The last sample's mixed / lam_eff / grad against the CPU reference of a two-sample batch: [b, partner]
    for the forward (mixed[b] reads x[b] and x[perm[b]]), [b, s] with perm[s] = b for the backward (x[b]
    receives grad_out[b] as itself and grad_out[s] as s's partner)."""
    B = x.shape[0]
    b = B - 1
    a = int(perm_cpu[b])
    s = int((perm_cpu == b).nonzero()[0, 0])
    two = torch.tensor([1, 0])
    pick = lambda t, i, j: torch.stack([t[i], t[j]]).cpu()  # noqa: E731
    want_mixed, want_lam_eff = reference.blend_regions_forward(
        pick(x.detach(), b, a), pick(regions, b, a), two, pick(lam_cpu, b, a)
    )
    want_grad = reference.blend_regions_backward(pick(go, b, s), pick(regions, b, s), two, pick(lam_cpu, b, s))
    forward = {"mixed": (got["mixed"][b], want_mixed[0]), "lam_eff": (got["lam_eff"][b], want_lam_eff[0], LAM_EFF_TOL)}
    check_all(rec, f"{name} forward, sample {b}", forward)
    check_all(rec, f"{name} backward, sample {b}", {"grad_x": (got["grad_x"][b], want_grad[0])})


def _fits(rec: Recorder, name: str, device: torch.device, nbytes: int) -> bool:
    """Whether ``nbytes`` (with a margin) fit in the device's free memory; records a skip if not."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    if free < 1.25 * nbytes:
        rec.skip(name, f"out of memory: needs about {nbytes / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
        return False
    return True


def probe_launch_limits(ctx: Context, rec: Recorder) -> None:
    """Batches beyond a launch grid's 65,535 in y, a large batch, and element offsets past 2**31."""
    dev, g = ctx.device, gen(4)
    # 1. many tiny images: every kernel backend against the reference on the same device tensors
    B = 64 if ctx.small else 100_000
    x = images((B, 1, 2, 2), torch.float32, "NCHW", dev, g)
    go = images((B, 1, 2, 2), torch.float32, "NCHW", dev, g)
    grad = images((B, 1, 2, 2), torch.float32, "NCHW", dev, g)
    perm, lam, q = torch.randperm(B, generator=g).to(dev), levels(B, g).to(dev), torch.rand(B, generator=g).to(dev)
    cases = {
        "blend_regions 1x1 mixup": ("blend_regions", {"regions": torch.zeros(B, 1, 1, dtype=torch.int8, device=dev)}),
        "blend_regions 2x2 codes": ("blend_regions", {"regions": codes(B, 2, 2, g).to(dev)}),
        "rmix grid 1": ("rmix", {"grid": 1}),
        "rmix grid 2": ("rmix", {"grid": 2}),
    }
    for label, (op, extra) in cases.items():
        kw = {"grad": grad, "perm": perm, "lam": lam, "q": q, **extra}
        want = None
        for backend in ctx.kernels:
            name = f"{backend} B={B} 1x2x2 {label}"
            with rec.case(name):
                if want is None:
                    want = run_op(op, "reference", x, go, **kw)
                got = run_op(op, backend, x, go, **kw)
                check_all(rec, name, {k: (got[k], want[k], *([LAM_EFF_TOL] if k == "lam_eff" else [])) for k in want})
    del x, go, grad, perm, lam, q, cases
    free_memory()

    # 2. a large bfloat16 batch and 3. a permuted view whose channel offsets pass 2**31 elements
    big = (4, 3, 16, 16) if ctx.small else (1024, 3, 512, 512)
    base = (3, 8, 8, 8) if ctx.small else (3, 4096, 512, 512)
    p = 4
    for label, shape, permuted in (("large", big, False), ("offsets past 2**31", base, True)):
        numel = shape[0] * shape[1] * shape[2] * shape[3]
        for backend in ctx.kernels:
            for op in ("blend_regions", "rmix"):
                name = f"{backend} {op} {label} {'x'.join(map(str, shape))}{' permuted' if permuted else ''} bf16"
                if not _fits(rec, name, dev, 6 * 2 * numel):  # x, grad, go, mixed, grad_x and a spare
                    continue
                with rec.case(name, free=True):
                    _large_case(rec, name, backend, op, shape, permuted, p, dev)


def _large_case(
    rec: Recorder, name: str, backend: str, op: str, shape, permuted: bool, p: int, dev: torch.device
) -> None:
    gd = torch.Generator(dev).manual_seed(5)
    x = torch.randn(shape, generator=gd, device=dev, dtype=torch.bfloat16)
    go = torch.randn(shape, generator=gd, device=dev, dtype=torch.bfloat16)
    grad = torch.randn(shape, generator=gd, device=dev, dtype=torch.bfloat16) if op == "rmix" else None
    if permuted:  # (C, B, H, W) storage viewed as (B, C, H, W): channel c of any sample starts at c * B*H*W
        x, go = x.permute(1, 0, 2, 3), go.permute(1, 0, 2, 3)
        grad = grad.permute(1, 0, 2, 3) if grad is not None else None
        largest = sum((n - 1) * s for n, s in zip(x.shape, x.stride(), strict=True))
        rec.note(f"{name}: strides", {"x": x.stride(), "largest element offset": largest})
    B = x.shape[0]
    g = gen(6)
    perm_cpu, lam_cpu, q_cpu = torch.randperm(B, generator=g), levels(B, g), torch.rand(B, generator=g)
    perm = perm_cpu.to(dev)
    regions = codes(B, p, p, g).to(dev)
    got = run_op(op, backend, x, go, grad=grad, perm=perm, lam=lam_cpu.to(dev), q=q_cpu.to(dev),
                 grid=p, regions=regions)  # fmt: skip
    if op == "rmix":
        b = B - 1
        want_mask = reference.saliency_mask(reference.cell_saliency(grad[b:].cpu(), p), q_cpu[b:])
        check_all(rec, f"{name} mask, sample {b}", {"mask": (got["mask"][b:], want_mask)})
        regions = rmix_fast.regions_from_mask(got["mask"], perm)
    _last_sample_checks(rec, name, got, x, go, regions, perm_cpu, lam_cpu)


def probe_determinism(ctx: Context, rec: Recorder) -> None:
    """The same call twice: identical outputs, forward and backward."""
    B, C, S, p = (4, 3, 16, 4) if ctx.small else (16, 3, 224, 4)
    dev = ctx.device
    for dtype_name in ("float32", "bfloat16"):
        for layout in LAYOUTS:
            g = gen(7)
            dtype = DTYPES[dtype_name]
            x = images((B, C, S, S), dtype, layout, dev, g)
            grad = images((B, C, S, S), dtype, layout, dev, g)
            go = images((B, C, S, S), dtype, layout, dev, g)
            kw = {"grad": grad, "perm": torch.randperm(B, generator=g).to(dev), "lam": levels(B, g).to(dev),
                  "q": torch.rand(B, generator=g).to(dev), "grid": p, "regions": codes(B, 8, 8, g).to(dev)}  # fmt: skip
            for backend in ctx.backends:
                for op in ("blend_regions", "rmix"):
                    name = f"{backend} {op} {dtype_name} {layout}"
                    with rec.case(name):
                        first, second = run_op(op, backend, x, go, **kw), run_op(op, backend, x, go, **kw)
                        check_all(rec, name, {k: (second[k], first[k]) for k in first}, exact=True)


def _where_in_rmix_fast(exc: BaseException) -> str | None:
    """The innermost frame of the traceback inside rmix_fast: file:line (function) and the line's code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}rmix_fast{os.sep}" in f.filename]
    if not frames:
        return None
    f = frames[-1]
    path = f.filename[f.filename.rfind(f"{os.sep}rmix_fast{os.sep}") + 1 :]
    return f"{path}:{f.lineno} ({f.name}): {(f.line or '').strip()}"


def probe_sync_free(ctx: Context, rec: Recorder) -> None:
    """A whole step per mixer and kernel backend under sync debug mode "error": which call syncs."""
    for backend in ctx.kernels:
        for mixer_cls in (rmix_fast.Mixup, rmix_fast.CutMix, rmix_fast.RMix):
            name = f"{mixer_cls.__name__} {backend}"
            with rec.case(name):
                raised = _sync_checked_step(ctx, mixer_cls(10, generator=gen(8), backend=backend))
                rec.check(name, not raised, synced=raised)


def _sync_checked_step(ctx: Context, mixer: rmix_fast.mixers.Mixer) -> dict[str, dict[str, str | None]]:
    """One warm-up step, then each stage of a step under sync debug mode "error"; the stages that synced (a
    stage that raised is run again without the check, so the next one gets its inputs)."""
    from torch import nn

    dev, K = ctx.device, mixer.num_classes
    B, S = (8, 16) if ctx.small else (64, 32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, K)).to(dev)  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = rmix_fast.SoftTargetCrossEntropy()
    x = torch.randn(B, 3, S, S, device=dev)
    y = torch.randint(0, K, (B,), device=dev)
    state: dict[str, Any] = {}

    def saliency() -> None:
        state["grad"] = rmix_fast.input_gradient(model, x, y) if mixer.needs_grad else None

    def mix() -> None:
        state["x_mix"], state["y_soft"] = mixer(x, y, state["grad"])

    def loss() -> None:
        state["loss"] = loss_fn(model(state["x_mix"]), state["y_soft"])

    def step() -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    stages = {"input_gradient": saliency, "mixer": mix, "loss": loss, "backward": lambda: state["loss"].backward(),
              "optimizer_step": step}  # fmt: skip
    for _ in range(3):  # warm-up: compiles (R-Mix draws its grid per batch), lazy initialisation
        for fn in stages.values():
            fn()
    torch.cuda.synchronize(dev)
    raised: dict[str, dict[str, str | None]] = {}
    for stage, fn in stages.items():
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
        except RuntimeError as exc:
            raised[stage] = {"error": str(exc).strip().splitlines()[0][:300], "where": _where_in_rmix_fast(exc)}
        finally:
            torch.cuda.set_sync_debug_mode(0)
        if stage in raised:
            fn()
    torch.cuda.synchronize(dev)
    return raised


def triton_variant_counts() -> dict[str, int] | None:
    """Compiled variants per Triton kernel of rmix_fast (every JITFunction in an imported rmix_fast module,
    through autotuner / heuristics wrappers). Triton's internals (``device_caches``): None where unavailable,
    e.g. under the interpreter."""
    try:
        from triton.runtime.jit import JITFunction
    except Exception:
        return None
    found: dict[int, tuple[str, Any]] = {}
    for mod_name, module in list(sys.modules.items()):
        if not mod_name.startswith("rmix_fast.") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            fn, depth = value, 0
            while not isinstance(fn, JITFunction) and hasattr(fn, "fn") and depth < 4:
                fn, depth = fn.fn, depth + 1
            if isinstance(fn, JITFunction):
                found.setdefault(id(fn), (f"{mod_name}.{attr}", fn))
    if not found:
        return None
    counts = {}
    try:
        for name, fn in found.values():
            n = sum(len(entry[0]) for entry in fn.device_caches.values())
            if n:
                counts[name] = n
    except Exception:
        return None
    return counts


def probe_recompiles(ctx: Context, rec: Recorder) -> None:
    """CutMix batches at 224²: the first batch's time, the rest's, and Triton variants compiled per batch."""
    B, S, n = (4, 32, 5) if ctx.small else (64, 224, 30)
    dev = ctx.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    rec.note("triton_cache_dir", os.environ.get("TRITON_CACHE_DIR"))
    for layout in LAYOUTS:
        name = f"CutMix {n} batches B={B} {S}x{S} float32 {layout}"
        with rec.case(name):
            g = gen(9)
            mixer = rmix_fast.CutMix(10, generator=gen(10))
            x = images((B, 3, S, S), torch.float32, layout, dev, g)
            y = torch.randint(0, 10, (B,), generator=g).to(dev)
            sync()
            before = triton_variant_counts()
            times, new_variants = [], []
            last = sum(before.values()) if before is not None else None
            start = time.perf_counter()
            for _ in range(n):
                if time.perf_counter() - start > RECOMPILE_CAP_S:  # every batch compiling: enough seen
                    break
                t0 = time.perf_counter()
                mixer(x, y)
                sync()
                times.append(1e3 * (time.perf_counter() - t0))
                counts = triton_variant_counts()
                if counts is not None and last is not None:
                    new_variants.append(sum(counts.values()) - last)
                    last = sum(counts.values())
            after = triton_variant_counts()
            warm = sorted(times[1:])
            recompiled = [i + 1 for i, k in enumerate(new_variants) if k and i > 0]
            rec.check(
                name, not recompiled, backend=rmix_fast.ops.resolve_backend("auto", dev, None), batches=len(times),
                cold_ms=round(times[0], 3), warm_median_ms=round(warm[len(warm) // 2], 3),
                warm_max_ms=round(warm[-1], 3),
                variants_before=before, variants_after=after,
                new_variants_per_batch=new_variants if after is not None else "unavailable (no Triton JIT caches)",
                batches_after_the_first_that_compiled=recompiled,
            )  # fmt: skip


@dataclass(frozen=True)
class Probe:
    fn: Callable[[Context, Recorder], None]
    timeout_s: float  # on a GPU; small runs get SMALL_TIMEOUT_S
    exclusive: bool = False  # runs alone: memory-heavy or timed
    cuda_only: bool = False
    fresh_triton_cache: bool = False


PROBES = {
    "param_views": Probe(probe_param_views, 60),
    "bit_exact": Probe(probe_bit_exact, 120),
    "ties": Probe(probe_ties, 90),
    "determinism": Probe(probe_determinism, 90),
    "sync_free": Probe(probe_sync_free, 60, cuda_only=True),
    "launch_limits": Probe(probe_launch_limits, 120, exclusive=True),
    "recompiles": Probe(probe_recompiles, 100, exclusive=True, fresh_triton_cache=True),
}
SMALL_TIMEOUT_S = 120
RECOMPILE_CAP_S = 30.0  # per layout: the recompiles probe stops there if every batch compiles


# ------------------------------------------------------------------------------------------ the runner


def outcome(details: dict[str, Any]) -> tuple[str, str]:
    """(status, one-line summary) of a probe's details."""
    checks, skipped = details.get("checks", []), details.get("skipped", [])
    failed = [c for c in checks if not c["ok"]]
    tail = f", {len(skipped)} skipped ({skipped[0]['reason']})" if skipped else ""
    if failed:
        names = "; ".join(c["case"] for c in failed[:3]) + (" ..." if len(failed) > 3 else "")
        return "failed", f"{len(failed)} of {len(checks)} checks failed{tail}: {names}"
    if not checks:
        return ("skipped", skipped[0]["reason"]) if skipped else ("error", "no check ran")
    return "passed", f"{len(checks)} checks{tail}"


def run_child(args: argparse.Namespace) -> int:
    """The child process: one probe, its details written to --result as it goes."""
    device = torch.device(args.device)
    path = Path(args.result)
    rec = Recorder(path)
    infos = rmix_fast.available_backends(device)
    backends = [b for b, info in infos.items() if info.available and (not args.backends or b in args.backends)]
    backends.sort(key=lambda b: b != "reference")
    interpreted = frozenset(b for b in backends if "interpreter" in infos[b].reason.lower())
    ctx = Context(device, args.small, backends, args.dtypes, interpreted)
    rec.note("backends", backends)
    try:
        PROBES[args.run_probe].fn(ctx, rec)
    except PoisonedContext as exc:
        rec.note("error", f"stopped: the CUDA context is unusable after {exc}")
        return 3
    except Exception:
        rec.note("error", traceback.format_exc()[-2000:])
        return 2
    rec.note("done", True)
    return 0


def run_probe(name: str, args: argparse.Namespace, deadline: float, workdir: Path) -> dict[str, Any]:
    """Runs one probe in a child process; its record for the JSON."""
    probe = PROBES[name]
    record: dict[str, Any] = {"name": name, "status": "skipped", "seconds": 0.0, "summary": "", "details": {}}
    if probe.cuda_only and args.device != "cuda":
        record["summary"] = "no cuda"
        return record
    limit = min(SMALL_TIMEOUT_S if args.small else probe.timeout_s, deadline - time.monotonic())
    if limit < 5:
        record["summary"] = "out of time (--budget)"
        return record
    result = workdir / f"{name}.json"
    env = dict(os.environ)
    if args.device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    cache = Path(tempfile.mkdtemp(prefix=f"triton-{name}-", dir=workdir)) if probe.fresh_triton_cache else None
    if cache is not None:
        env["TRITON_CACHE_DIR"] = str(cache)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--run-probe", name,
           "--result", str(result), "--dtypes", *args.dtypes]  # fmt: skip
    cmd += ["--small"] if args.small else []
    cmd += ["--backends", *args.backends] if args.backends else []
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
        rc, stderr, timed_out = done.returncode, done.stderr, False
    except subprocess.TimeoutExpired as exc:
        rc, timed_out = None, True
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    record["seconds"] = round(time.monotonic() - t0, 2)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
    details = json.loads(result.read_text()) if result.exists() else {}
    record["details"] = details
    status, summary = outcome(details)
    if timed_out:
        status, summary = "error", f"timed out after {limit:.0f} s ({summary})"
    elif rc != 0 or not details.get("done"):
        error = details.get("error") or stderr.strip()[-2000:] or f"exit status {rc}"
        details["stderr_tail"] = stderr.strip()[-2000:]
        status, summary = "error", f"exit status {rc}: {error.strip().splitlines()[-1][:300]} ({summary})"
    record["status"], record["summary"] = status, summary
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--small", action="store_true", help="tiny sizes: a self-test of the probes' logic")
    ap.add_argument("--probes", nargs="+", choices=list(PROBES), default=list(PROBES), help="(default: all)")
    ap.add_argument("--backends", nargs="+", choices=list(rmix_fast.available_backends("cpu")),
                    help="only these backends (default: every one that runs on the device)")  # fmt: skip
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="of bit_exact (all)")
    ap.add_argument("--budget", type=float, default=220.0, help="seconds for the whole run (220)")
    ap.add_argument("--jobs", type=int, default=5, help="how many probes that share the device run at once (5)")
    ap.add_argument("--out", type=Path, help="the JSON (default: bench/results/gpu-checks-<device>-<date>.json)")
    ap.add_argument("--run-probe", choices=list(PROBES), help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but torch.cuda.is_available() is False")
    if args.jobs < 1 or args.budget <= 0:
        ap.error("--jobs and --budget must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.run_probe:
        sys.exit(run_child(args))
    device = torch.device(args.device)
    command = "python bench/gpu_checks.py " + " ".join(sys.argv[1:] if argv is None else argv)
    env = common.environment(device, command)
    out = args.out or common.RESULTS / f"gpu-checks-{device.type}-{env['date'][:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    infos = rmix_fast.available_backends(device)
    backends = {n: {"available": i.available, "reason": i.reason, "max_grid": i.max_grid} for n, i in infos.items()}
    payload: dict[str, Any] = {"bench": "gpu_checks", "schema": SCHEMA, **env, "small": args.small, "complete": False,
                               "backends": backends, "budget_s": args.budget, "probes": []}  # fmt: skip
    started = time.monotonic()
    deadline = started + args.budget
    records: dict[str, dict[str, Any]] = {}

    def finish(record: dict[str, Any]) -> None:
        records[record["name"]] = record
        payload["probes"] = [records[n] for n in args.probes if n in records]
        write_json(out, payload)
        print(f"gpu-check {record['name']}: {record['status']} in {record['seconds']:.1f} s: {record['summary']}",
              flush=True)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="gpu-checks-") as tmp:
        workdir = Path(tmp)
        shared = [n for n in args.probes if not PROBES[n].exclusive]
        alone = [n for n in args.probes if PROBES[n].exclusive]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_probe, n, args, deadline, workdir) for n in shared]
            for future in as_completed(futures):  # printed as each ends
                finish(future.result())
        for name in alone:
            finish(run_probe(name, args, deadline, workdir))
    payload["complete"] = True
    payload["seconds"] = round(time.monotonic() - started, 1)
    write_json(out, payload)
    counts = {s: sum(r["status"] == s for r in payload["probes"]) for s in STATUSES}
    print(f"gpu-checks: {', '.join(f'{k} {v}' for k, v in counts.items() if v)} in {payload['seconds']:.0f} s -> {out}")
    return payload


if __name__ == "__main__":
    run = main()
    sys.exit(0 if all(p["status"] in ("passed", "skipped") for p in run["probes"]) else 1)
