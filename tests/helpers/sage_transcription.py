"""SAGE's semantics (README, issue 17) transcribed literally in float64: Python loops over samples and
candidate shifts, slices for the shifts, a tap loop for the blur. Independent of ``rmix_fast.reference.sage``
(no shared helper), so the two check each other; ``sage_published.py`` ties this to the authors' code."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SageResult:
    mixed: Tensor  # (B, C, H, W) float64
    lam_eff: Tensor  # (B,) float64
    shift: Tensor  # (B, 2) int64
    weight: Tensor  # (B, H, W) float64: M at d*
    scores: Tensor  # (B, K) float64


def _reflect(i: int, n: int) -> int:
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def smoothed_saliency(grad: Tensor, sigma: float = 1.0, kernel_size: int = 5) -> Tensor:
    """(B, C, H, W) -> (B, H, W): mean_c |grad|, blurred along rows then columns, all-ones fallback."""
    s = grad.double().abs().mean(dim=1)
    B, H, W = s.shape
    half = kernel_size // 2
    taps = [math.exp(-((t - half) ** 2) / (2 * sigma**2)) for t in range(kernel_size)]
    taps = [v / sum(taps) for v in taps]
    rows = torch.zeros_like(s)
    for j in range(W):
        for t, v in enumerate(taps):
            rows[:, :, j] += v * s[:, :, _reflect(j + t - half, W)]
    out = torch.zeros_like(s)
    for i in range(H):
        for t, v in enumerate(taps):
            out[:, i, :] += v * rows[:, _reflect(i + t - half, H), :]
    for b in range(B):
        total = float(out[b].sum())
        if not (math.isfinite(total) and total > 0):
            out[b] = 1.0
    return out


def _shifted(m: Tensor, dy: int, dx: int) -> Tensor:
    """out(p) = m(p + d) inside the last two dims, else 0."""
    H, W = m.shape[-2:]
    out = torch.zeros_like(m)
    ys, ye = max(0, -dy), min(H, H - dy)
    xs, xe = max(0, -dx), min(W, W - dx)
    if ys < ye and xs < xe:
        out[..., ys:ye, xs:xe] = m[..., ys + dy : ye + dy, xs + dx : xe + dx]
    return out


def transcribe(
    x: Tensor,
    grad: Tensor,
    perm: Tensor,
    lam: Tensor | float,
    offsets: Tensor,
    sigma: float = 1.0,
    kernel_size: int = 5,
    force_shift: Tensor | None = None,
) -> SageResult:
    """The semantics on float64 copies of the inputs (x keeps its autograd graph). ``force_shift`` (B, 2):
    mix at these shifts instead of each sample's best (the scores are still computed for every candidate)."""
    B = x.shape[0]
    lam = torch.as_tensor(lam, dtype=torch.float64).expand(B)
    s = smoothed_saliency(grad, sigma, kernel_size)
    xd = x.double()
    mixed, lam_eff, shifts, weights, all_scores = [], [], [], [], []
    for b in range(B):
        p = int(perm[b])
        a = max(float(lam[b]), 1e-12) * s[b] / s[b].sum()
        c = max(1 - float(lam[b]), 1e-12) * s[p] / s[p].sum()
        scores = []
        for dy, dx in offsets.tolist():
            c_d = _shifted(c, dy, dx)
            m = a / (a + c_d).clamp_min(1e-16)
            scores.append(float((a * m + c_d * (1 - m)).sum()))
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))  # the first of equal maxima
        dy, dx = offsets[best].tolist() if force_shift is None else force_shift[b].tolist()
        c_d = _shifted(c, dy, dx)
        m = a / (a + c_d).clamp_min(1e-16)
        mixed.append(m * xd[b] + (1 - m) * _shifted(xd[p], dy, dx))
        lam_eff.append(m.mean())
        shifts.append((dy, dx))
        weights.append(m)
        all_scores.append(scores)
    return SageResult(
        torch.stack(mixed),
        torch.stack(lam_eff),
        torch.tensor(shifts, dtype=torch.int64),
        torch.stack(weights),
        torch.tensor(all_scores, dtype=torch.float64),
    )
