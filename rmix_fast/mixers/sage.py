"""SAGE (Ma et al., BMVC 2022): saliency-guided mixing with optimal rearrangement, one ``sage`` call."""

from __future__ import annotations

from torch import Tensor

from rmix_fast.mixers.base import Mixer, MixParams, check_number
from rmix_fast.ops import sage
from rmix_fast.reference.sage import sage_saliency
from rmix_fast.sampling import sample_sage_params

__all__ = ["SAGE"]


class SAGE(Mixer):
    """SAGE: per batch a saliency scale lam = Beta(alpha, alpha) * ``upper``, a random partner and
    K = floor((2H - 1)(2W - 1) * ``rand_pos``) candidate shifts of the partner; each image keeps the shift
    whose soft saliency mask keeps the most saliency (``rmix_fast.sage``). Needs the input gradient; its
    published protocol also trains on the clean batch (``clean_loss_backward`` with weight 1 - update_ratio,
    the mixed loss times update_ratio). The other arguments are ``Mixer``'s.

    Args:
        upper: the scale's upper bound u (0.5 for CIFAR-100 PreActResNet-18, 0.6 for CIFAR-10, 0.7 for
            ResNeXt and WRN16-8 in the authors' runs).
        rand_pos: the fraction of all shifts searched (0.01 in the paper's runs).
        sigma, kernel_size: the Gaussian blur of the saliency.
    """

    needs_grad = True

    def __init__(
        self,
        num_classes: int,
        *,
        alpha: float = 1.0,
        upper: float = 0.5,
        rand_pos: float = 0.01,
        sigma: float = 1.0,
        kernel_size: int = 5,
        **common,
    ) -> None:
        super().__init__(num_classes, alpha=alpha, **common)
        self.upper = check_number("upper", upper, 0.0, 1.0, open_lo=True)
        self.rand_pos = check_number("rand_pos", rand_pos, 0.0, 1.0, open_lo=True)
        self.sigma = check_number("sigma", sigma, 0.0, float("inf"), open_lo=True)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
        self.kernel_size = kernel_size

    def mix(self, x: Tensor, grad: Tensor | None) -> tuple[Tensor, MixParams]:
        B, _, H, W = x.shape
        p = sample_sage_params(
            B, H, W, alpha=self.alpha, upper=self.upper, rand_pos=self.rand_pos,
            per_sample_lam=self.per_sample_lam, generator=self.generator, device=x.device,
        )  # fmt: skip
        # the sampler's draws are valid by construction: skip the content checks and their sync
        mixed, lam_eff, shift = sage(
            x, grad.detach(), perm=p.perm, lam=p.lam, offsets=p.offsets, sigma=self.sigma,
            kernel_size=self.kernel_size, backend=self.backend, validate=False,
        )  # fmt: skip
        return mixed, MixParams(True, p.perm, p.lam, lam_eff, shift=shift, offsets=p.offsets)

    def saliency_map(self, grad: Tensor, params: MixParams) -> Tensor | None:
        s = sage_saliency(grad.float(), self.sigma, self.kernel_size)
        return s / s.sum(dim=(1, 2), keepdim=True)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, upper={self.upper}, rand_pos={self.rand_pos}, sigma={self.sigma}, "
            f"kernel_size={self.kernel_size}"
        )
