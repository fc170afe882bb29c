"""SAGE as its public code computes it (SamsungLabs/SAGE, ``utils_SAGE.sage`` and the blur of ``main.py``),
transcribed in float64 for square images: the zero-padded 3W x 3W canvas, the shifts as ``affine_grid`` /
``grid_sample(mode="nearest")`` with the authors' theta, the loop over images, torchvision's Gaussian blur
(a 2-D kernel, reflect padding). The randomness (partner, scale, candidates) is an input here.

The candidates are the authors' ``coord`` columns (c0, c1) in [1, 2W - 1]; ``coord_to_offsets`` gives the
(dy, dx) shifts ``rmix_fast.sage`` takes for them: dy = W - c0, dx = W - c1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def torchvision_blur(s: Tensor, kernel_size: int = 5, sigma: float = 1.0) -> Tensor:
    """(B, 1, H, W) -> torchvision ``GaussianBlur``: the 1-D pdf normalised, its outer product as one 2-D
    kernel, reflect padding, one conv2d."""
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, steps=kernel_size, dtype=s.dtype)
    pdf = torch.exp(-0.5 * (t / sigma).pow(2))
    k1 = pdf / pdf.sum()
    kernel = torch.mm(k1[:, None], k1[None, :])[None, None]
    pad = kernel_size // 2
    return F.conv2d(F.pad(s, [pad, pad, pad, pad], mode="reflect"), kernel)


def coord_to_offsets(coord: Tensor, w: int) -> Tensor:
    """(2, K) authors' coordinates -> (K, 2) int64 shifts (dy, dx)."""
    return torch.stack([w - coord[0], w - coord[1]], dim=1).to(torch.int64)


def published_sage(x: Tensor, s_tilde: Tensor, index: Tensor, alpha: float, coord: Tensor):
    """``utils_SAGE.sage`` with its draws given: x (B, C, W, W), s_tilde (B, 1, W, W) the blurred saliency,
    ``index`` the partner permutation, ``alpha`` the scale, ``coord`` (2, K). Returns (mixed, lam, best_ij)."""
    x, g = x.double(), s_tilde.double()
    B, C, w, _ = x.shape

    def pad(t: Tensor) -> Tensor:
        return F.pad(t, [w, w, w, w], mode="constant", value=0.0)

    def normalize(t: Tensor, a: float) -> Tensor:
        return t / t.sum(dim=[1, 2, 3], keepdim=True) * max(a, 1e-12)

    g1 = pad(g)
    g2 = g1[index]
    g1, g2 = normalize(g1, alpha), normalize(g2, 1 - alpha)
    x1 = pad(x)
    x2 = x1[index]
    K = coord.shape[1]
    theta = torch.eye(2, 3, dtype=torch.float64).repeat(K, 1, 1)
    theta[:, 0, 2] = 2 * (w - coord[1, :]) / (3 * w)
    theta[:, 1, 2] = 2 * (w - coord[0, :]) / (3 * w)
    grid = F.affine_grid(theta, [K, 1, 3 * w, 3 * w], align_corners=False)
    best = torch.zeros(B, 2, dtype=torch.int64)
    for img in range(B):
        t2 = F.grid_sample(g2[img].expand(K, 1, 3 * w, 3 * w), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)  # fmt: skip
        t1 = g1[img].expand(K, 1, 3 * w, 3 * w)
        m = t1 / (t1 + t2).clamp(min=1e-16)
        saliency = (t1 * m + t2 * (1 - m))[:, :, w : 2 * w, w : 2 * w]
        best[img] = coord[:, saliency.sum(dim=[1, 2, 3]).argmax()]
    theta = torch.eye(2, 3, dtype=torch.float64).repeat(B, 1, 1)
    theta[:, 0, 2] = 2 * (w - best[:, 1]) / (3 * w)
    theta[:, 1, 2] = 2 * (w - best[:, 0]) / (3 * w)
    grid = F.affine_grid(theta, [B, C, 3 * w, 3 * w], align_corners=False)
    t2 = F.grid_sample(g2, grid[:, :, :, :], mode="nearest", padding_mode="zeros", align_corners=False)
    m = g1 / (g1 + t2).clamp(min=1e-16)
    lam = m[:, :, w : 2 * w, w : 2 * w].mean(dim=[1, 2, 3])
    x2t = F.grid_sample(x2, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    mixed = (x1 * m + x2t * (1 - m))[:, :, w : 2 * w, w : 2 * w]
    return mixed, lam, best
