"""The baseline of ``bench_sage.py``: SAGE's mixing as the published code (SamsungLabs/SAGE, ``utils_SAGE.sage``
and the blur of its ``main.py``) runs it, with the draws as inputs.

What makes it slow, and what the benchmark compares against, is kept as the code has it:

* the saliency: mean over channels of |grad|, then torchvision's ``GaussianBlur`` (the 1-D Gaussian's outer
  product as one 2-D kernel, reflect padding, one ``conv2d``);
* every image and saliency map zero-padded to a 3W x 3W canvas;
* the shifts as ``affine_grid`` + ``grid_sample(mode="nearest")`` over that canvas;
* a Python loop over the images, each building a (K, 1, 3W, 3W) tensor per step of the candidate search.

The draws (partner ``perm``, scale ``lam``, the K candidate shifts) are inputs here, so the baseline and the op
see the same ones. The shifts are given as the op takes them, ``offsets`` (K, 2) = (dy, dx); the authors'
``coord`` columns (c0, c1) are (W - dy, W - dx), and their translation 2 (W - c) / 3W is 2 d / 3W. Square
images only (the code's ``w`` is both sides). It runs in x's dtype: float32 as in the published runs and the
benchmark (float64 in the tests, against the reference).

The per-image tensors make its memory grow with K x 9 W^2 whatever the batch size: ``peak_bytes`` predicts the
peak, so the benchmark can report that wall at 224 px instead of allocating it (``plan``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CPU_CAP_BYTES", "MemoryPlan", "blur", "paper_sage", "peak_bytes", "plan"]

# A CPU run never times the baseline beyond this much temporary memory (or what /proc/meminfo calls available):
# a shared 2-core machine would swap long before it finished.
CPU_CAP_BYTES = 8 << 30


def blur(s: Tensor, kernel_size: int = 5, sigma: float = 1.0) -> Tensor:
    """(B, 1, H, W) -> torchvision's ``GaussianBlur``: the normalised 1-D pdf, its outer product as one 2-D
    kernel, reflect padding, one conv2d."""
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, steps=kernel_size, dtype=s.dtype, device=s.device)
    pdf = torch.exp(-0.5 * (t / sigma).pow(2))
    k1 = pdf / pdf.sum()
    kernel = torch.mm(k1[:, None], k1[None, :])[None, None]
    pad = kernel_size // 2
    return F.conv2d(F.pad(s, [pad, pad, pad, pad], mode="reflect"), kernel)


def _canvas_shift_grid(shifts: Tensor, w: int, n: int, c: int, dtype: torch.dtype) -> Tensor:
    """The sampling grid of ``n`` translations by (dy, dx) on the 3w x 3w canvas (the authors' theta)."""
    theta = torch.eye(2, 3, dtype=dtype, device=shifts.device).repeat(n, 1, 1)
    theta[:, 0, 2] = 2 * shifts[:, 1].to(dtype) / (3 * w)
    theta[:, 1, 2] = 2 * shifts[:, 0].to(dtype) / (3 * w)
    return F.affine_grid(theta, [n, c, 3 * w, 3 * w], align_corners=False)


def paper_sage(
    x: Tensor, grad: Tensor, perm: Tensor, lam: float, offsets: Tensor, *, sigma: float = 1.0, kernel_size: int = 5
) -> tuple[Tensor, Tensor, Tensor]:
    """x, grad (B, C, W, W); perm (B,) partners; lam the batch's scale (the code's ``alpha``); offsets (K, 2)
    candidate shifts (dy, dx). Returns (mixed, lam_eff (B,), shift (B, 2) int64), as ``rmix_fast.sage``.

    Every tensor stays on x's device: the loop never waits for the device (no ``.item()``)."""
    B, C, w, w2 = x.shape
    if w != w2:
        raise ValueError(f"the published code takes square images only, got {w}x{w2}")
    offsets = offsets.to(device=x.device, dtype=torch.int64)
    K = offsets.shape[0]
    s_tilde = blur(grad.to(x.dtype).abs().mean(dim=1, keepdim=True), kernel_size, sigma)

    def pad(t: Tensor) -> Tensor:  # the 3w x 3w canvas, zeros around the image
        return F.pad(t, [w, w, w, w], mode="constant", value=0.0)

    def normalize(t: Tensor, a: float) -> Tensor:
        return t / t.sum(dim=[1, 2, 3], keepdim=True) * max(a, 1e-12)

    g1 = pad(s_tilde)
    g2 = g1[perm]
    g1, g2 = normalize(g1, lam), normalize(g2, 1 - lam)
    x1 = pad(x)
    x2 = x1[perm]
    grid = _canvas_shift_grid(offsets, w, K, 1, x.dtype)  # (K, 3w, 3w, 2), for the whole loop
    best = torch.zeros(B, 2, dtype=torch.int64, device=x.device)
    for img in range(B):
        # The variables are rebound, not freed, at each step: the previous image's tensors live until then.
        t2 = F.grid_sample(g2[img].expand(K, 1, 3 * w, 3 * w), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)  # fmt: skip
        t1 = g1[img].expand(K, 1, 3 * w, 3 * w)
        m = t1 / (t1 + t2).clamp(min=1e-16)
        saliency = (t1 * m + t2 * (1 - m))[:, :, w : 2 * w, w : 2 * w]
        best[img] = offsets[saliency.sum(dim=[1, 2, 3]).argmax()]
    grid = _canvas_shift_grid(best, w, B, C, x.dtype)
    t2 = F.grid_sample(g2, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    m = g1 / (g1 + t2).clamp(min=1e-16)
    lam_eff = m[:, :, w : 2 * w, w : 2 * w].mean(dim=[1, 2, 3])
    x2t = F.grid_sample(x2, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    mixed = (x1 * m + x2t * (1 - m))[:, :, w : 2 * w, w : 2 * w]
    return mixed, lam_eff, best


def peak_bytes(batch: int, channels: int, width: int, candidates: int, *, itemsize: int = 4) -> int:
    """Predicted peak of the memory ``paper_sage`` allocates (its inputs not counted), in bytes: the largest of
    its phases, counted in canvases of n = 9 w^2 elements (checked against the allocations torch.profiler sees on
    the CPU to within 1 %, ``tests/test_bench.py``).

    Alive throughout: the batch's canvases g1, g2, x1, x2 ((2 + 2 C) B n) and the blurred saliency (B w^2).

    * The loop: the candidate grid (K, 3w, 3w, 2) = 2 K n. From the second image on, the previous image's t2,
      m and saliency (a view that keeps its whole (K, 1, 3w, 3w) sum alive) are still bound while the new t2, m
      and sum are made, with t1 * m and t2 * (1 - m) alive for the sum: 6 K n (t1 is an ``expand``, free).
      8 K n in all: with K = 1998 at 224 px, 28.9 GB whatever the batch size.
    * After it, the batch grid (2 B n) is made before the candidate grid goes: 5 K n + 2 B n.
    * The final mask: the old m and saliency (2 K n), the grid, t2, the sum, its clamp and m (5 B n).
    * The blend: the saliency (K n), the grid, t2, m (4 B n), x2t and the blend's three (4 B C n).
    """
    n = 9 * width * width
    K, B, C = candidates, batch, channels
    alive = (2 + 2 * C) * B * n + B * width * width
    phases = (8 * K * n, 5 * K * n + 2 * B * n, 2 * K * n + 5 * B * n, K * n + 4 * B * n + 4 * B * C * n)
    return itemsize * (alive + max(phases))


def _meminfo_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux), without psutil."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class MemoryPlan:
    """Whether the baseline is run for a case: its predicted peak against the memory it may use."""

    needed: int  # bytes, ``peak_bytes``
    budget: int  # bytes
    source: str  # where the budget comes from
    fits: bool

    @property
    def note(self) -> str:
        """ "timed", or "skipped: needs X GB" with the budget and its source (JSON and tables)."""
        if self.fits:
            return "timed"
        return f"skipped: needs {self.needed / 1e9:.3g} GB ({self.budget / 1e9:.3g} GB available: {self.source})"


def plan(
    shape: tuple[int, int, int, int], candidates: int, device: torch.device, *, max_bytes: int | None = None
) -> MemoryPlan:
    """The baseline's predicted peak for a float32 batch of ``shape`` with K = ``candidates`` and whether it fits:
    under ``max_bytes`` when given; else on a GPU under 90 % of its free memory (the caching allocator's
    rounding and fragmentation need the rest), on the CPU under ``CPU_CAP_BYTES`` and MemAvailable."""
    B, C, _, W = shape
    needed = peak_bytes(B, C, W, candidates)
    if max_bytes is not None:
        budget, source = max_bytes, "the run's --paper-max-gb"
    elif device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, source = int(0.9 * free), "90 % of the GPU's free memory"
    else:
        available = _meminfo_available()
        budget = min(CPU_CAP_BYTES, available) if available else CPU_CAP_BYTES
        source = f"the CPU cap of {CPU_CAP_BYTES >> 30} GiB" + (" and MemAvailable" if available else "")
    return MemoryPlan(needed, budget, source, needed <= budget)
