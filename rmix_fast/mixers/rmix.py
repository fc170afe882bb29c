"""R-Mix (Luu et al. 2023): saliency-guided mixing through random gradient thresholding, one ``rmix`` call."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rmix_fast.mixers.base import Mixer, MixParams
from rmix_fast.ops import rmix, saliency_grid
from rmix_fast.sampling import RMixParams, check_grids, check_levels, sample_rmix_params

__all__ = ["RMix"]


class RMix(Mixer):
    """R-Mix: per batch p from ``grids``, lam ~ Beta(alpha, alpha) (one per batch, or per sample), q per
    sample from ``levels`` equal steps in [0, 0.99], a random partner for every sample. Needs the input
    gradient (``rmix_fast.input_gradient``). The other arguments are ``Mixer``'s (here also positional,
    after ``levels``)."""

    needs_grad = True

    def __init__(
        self,
        num_classes: int,
        alpha: float = 1.0,
        grids: Sequence[int] = (2, 4),
        levels: int = 10,
        prob: float = 1.0,
        label_smoothing: float = 0.0,
        per_sample_lam: bool = False,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            num_classes,
            alpha=alpha,
            prob=prob,
            label_smoothing=label_smoothing,
            per_sample_lam=per_sample_lam,
            generator=generator,
            backend=backend,
        )
        self.grids = check_grids(grids)
        self.levels = check_levels(levels)

    def mix(self, x: Tensor, grad: Tensor | None) -> tuple[Tensor, MixParams]:
        return self.blend(x, grad, self.draw_params(x))

    def draw_params(self, x: Tensor) -> RMixParams:
        """One batch's draw (p, lam, q, perm) on x's device, the grids checked against x's size."""
        B, _, H, W = x.shape
        bad = [p for p in self.grids if H % p or W % p]
        if bad:
            raise ValueError(f"grids {bad} do not divide the image size H={H}, W={W} (grids={self.grids})")
        return sample_rmix_params(
            B,
            alpha=self.alpha,
            grids=self.grids,
            levels=self.levels,
            per_sample_lam=self.per_sample_lam,
            generator=self.generator,
            device=x.device,
        )

    def blend(self, x: Tensor, grad: Tensor, p: RMixParams) -> tuple[Tensor, MixParams]:
        """``rmix`` with the draw ``p``."""
        # the sampler's draws are valid by construction: skip the content checks and their sync
        mixed, lam_eff, mask = rmix(
            x, grad.detach(), perm=p.perm, lam=p.lam, q=p.q, grid=p.grid, backend=self.backend,
            validate=False, return_mask=True,
        )  # fmt: skip
        return mixed, MixParams(True, p.perm, p.lam, lam_eff, grid=p.grid, q=p.q, mask=mask)

    def saliency_map(self, grad: Tensor, params: MixParams) -> Tensor | None:
        return saliency_grid(grad.float(), params.grid) if params.grid is not None else None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grids={self.grids}, levels={self.levels}"
