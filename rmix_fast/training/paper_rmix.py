"""The baseline every speed-up of ``bench/`` and the demo is measured against: R-Mix's mixing step written
the way the paper (and its published code) spells it, one PyTorch op per formula.

Eq. 2 channel-L2 saliency, eq. 3 normalise and average-pool to p x p, then per sample ``torch.quantile`` and
a ``>=`` threshold (eq. 4), nearest upsampling of the mask to the image, the agreement mask (eq. 5), the
blend with ``torch.where`` (eq. 6) and the label weight from pixel counts (eq. 7). Nothing is fused and the
percentile is a Python loop over the batch, as in the published code. It computes the same function as
``rmix_fast.reference.rmix_forward`` (``tests/test_bench.py`` checks it); only the cost differs.

Also here: the paper's saliency pass, ``loss.backward()`` through the whole network (parameter gradients
included, then thrown away), used by ``bench_step.py``'s "paper" step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["paper_input_gradient", "paper_rmix"]


def paper_rmix(x: Tensor, grad: Tensor, perm: Tensor, lam: Tensor, q: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) images and input gradient, (B,) perm, (B,) lam, (B,) q, grid p ->
    (mixed (B, C, H, W), lam_eff (B,) weight of each sample's own label)."""
    B, _, H, W = x.shape
    saliency = torch.sqrt(torch.mean(grad**2, dim=1, keepdim=True))  # (B, 1, H, W)          eq. 2
    saliency = saliency / saliency.sum(dim=(2, 3), keepdim=True)  # each map sums to 1   eq. 3
    saliency = F.avg_pool2d(saliency, kernel_size=(H // grid, W // grid))  # (B, 1, p, p)
    if saliency.dtype not in (torch.float32, torch.float64):
        saliency = saliency.float()  # torch.quantile takes float32 / float64 only
    top = []
    for b in range(B):  # eq. 4, one sample at a time
        threshold = torch.quantile(saliency[b].flatten(), q[b].to(saliency.dtype))
        top.append(saliency[b] >= threshold)
    m0 = F.interpolate(torch.stack(top).to(x.dtype), size=(H, W), mode="nearest").bool()  # (B, 1, H, W)
    m1 = m0[perm]
    agree = m0 == m1  # eq. 5
    partner = x[perm]
    lam4 = lam.view(B, 1, 1, 1).to(x.dtype)
    blended = lam4 * x + (1 - lam4) * partner
    mixed = torch.where(agree, blended, torch.where(m0, x, partner))  # eq. 6
    own = (~agree & m0).sum(dim=(1, 2, 3))
    lam_eff = (agree.sum(dim=(1, 2, 3)) * lam + own) / (H * W)  # eq. 7
    return mixed, lam_eff.float()


def paper_input_gradient(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    autocast: Callable[[], object],
) -> Tensor:
    """The paper's saliency pass: a full ``loss.backward()`` (weight gradients too), keep ``x.grad``, zero
    the parameter gradients again."""
    x = x.detach().requires_grad_(True)
    with autocast():
        loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.zero_grad(set_to_none=True)
    return x.grad
