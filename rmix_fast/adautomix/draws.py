"""AdAutoMix's per-iteration draws: the mixing ratios and the two sets of sources, from a ``torch.Generator``.

As ``AdAutoMix.forward_train`` draws them (JinXins/Adversarial-AutoMixup,
``openmixup/models/classifiers/AdAutoMix.py``; N = ``mix_samples``, ``is_random`` False as in the configs,
``mix_shuffle_no_repeat`` False by default):

* lines 237-238: ``index_bb = randperm(B)``, then ``index_mb = randperm(B)``;
* line 245: ``lam = np.random.beta(alpha, alpha, N)``, N independent draws;
* N >= 3 (lines 252-261, CIFAR's ``mix_samples=3``): the generator's sources (mb) are
  ``[index_mb, index_bb, randperm, ...]`` (the first two draws, then N - 2 fresh permutations); the
  classifier's sources (bb) are N fresh permutations; both sides use ``lam_i / sum(lam)``, normalised
  independent Betas, which are not a Dirichlet (that would normalise Gammas). No source is the identity:
  ``co_mixup`` (lines 489-518) mixes ``x[index_mb[i]]`` for every i, so a sample need not be in its own mix.
* N = 2 (lines 273-281 and ``mixup``, lines 525-560, ImageNet's ``mix_samples=2``): source 0 is the batch
  itself and source 1 its permutation; the generator uses ``lam[0]`` with ``index_mb``, the classifier
  ``lam[1]`` with ``index_bb``, two unnormalised ratios (lam, 1 - lam).

Here every draw comes from one CPU generator in that order: the bb permutation, the mb permutation, the N
Betas, then (N >= 3) the generator's N - 2 extra permutations and the classifier's N permutations. For N > 3
the published loop redraws the classifier's list once per extra source and keeps the last; the discarded
draws are not repeated here. The numbers differ from numpy's and torch's global streams either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rmix_fast.sampling import sample_beta, to_device

__all__ = ["AdAutoMixDraw", "lam_fallback", "sample_adautomix"]


@dataclass(frozen=True)
class AdAutoMixDraw:
    """One iteration's draw. Row i of an index is source i: the mix is sum_i w_i * x[index[i]].

    ``index_mb``/``lam_mb`` feed the mask generator's mix (the generator trains on it through the frozen
    teacher); ``index_bb``/``lam_bb`` the classifier's. The λ are kept twice: on the device for kernels and
    label weights, and on the host (float64) for decisions such as ``fallback`` that must not wait for the
    device.
    """

    index_mb: Tensor  # (N, B) int64: the generator's sources
    index_bb: Tensor  # (N, B) int64: the classifier's sources
    lam_mb: Tensor  # (N,) float64 (as numpy's draws), sums to 1; cast where used
    lam_bb: Tensor  # (N,) float64, sums to 1; equal to lam_mb when N >= 3
    lam_mb_host: tuple[float, ...]
    lam_bb_host: tuple[float, ...]
    raw: tuple[float, ...]  # the N Beta(alpha, alpha) draws, before normalising

    @property
    def n_sources(self) -> int:
        return len(self.raw)

    def fallback(self, margin: float) -> bool:
        """Whether the classifier's mask is the constant λ this iteration (``lam_fallback`` on ``lam_bb``)."""
        return lam_fallback(self.lam_bb_host, margin)


def _check_sources(n_sources: object) -> int:
    # the code has no one-source path: N = 1 reaches lam[1] in the two-sample branch and fails
    if isinstance(n_sources, bool) or not isinstance(n_sources, int) or n_sources < 2:
        raise ValueError(f"n_sources must be an int >= 2 (AdAutoMix mixes at least two sources), got {n_sources!r}")
    return n_sources


def sample_adautomix(
    batch: int,
    n_sources: int,
    *,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> AdAutoMixDraw:
    """Draws one iteration's λ and sources the published code's way (see the module docstring), on the
    host from ``generator`` (a CPU generator; None uses the global one), then moves indices and λ to
    ``device`` without making the host wait (``rmix_fast.sampling.to_device``; two copies in all).

    Where every Beta underflows to 0 (only for tiny alpha) the code would divide 0 by 0; this returns 1/N each.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch must be an int >= 0, got {batch!r}")
    n = _check_sources(n_sources)
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (draws stay on the host), got {generator.device}")
    perm_bb = torch.randperm(batch, generator=generator)
    perm_mb = torch.randperm(batch, generator=generator)
    raw = sample_beta(alpha, n, generator)  # validates alpha (ValueError naming it)
    if n == 2:
        identity = torch.arange(batch)
        index_mb = torch.stack([identity, perm_mb])
        index_bb = torch.stack([identity, perm_bb])
        lam_mb = torch.stack([raw[0], 1.0 - raw[0]])
        lam_bb = torch.stack([raw[1], 1.0 - raw[1]])
    else:
        extra = [torch.randperm(batch, generator=generator) for _ in range(n - 2)]
        index_mb = torch.stack([perm_mb, perm_bb, *extra])
        index_bb = torch.stack([torch.randperm(batch, generator=generator) for _ in range(n)])
        total = raw.sum()
        lam_mb = raw / total if total > 0 else torch.full_like(raw, 1.0 / n)
        lam_bb = lam_mb
    # one copy per dtype: the views of a contiguous stack are contiguous themselves
    index = to_device(torch.stack([index_mb, index_bb]), device)
    lam = to_device(torch.stack([lam_mb, lam_bb]).to(torch.float64), device)
    return AdAutoMixDraw(
        index_mb=index[0],
        index_bb=index[1],
        lam_mb=lam[0],
        lam_bb=lam[1],
        lam_mb_host=tuple(lam_mb.tolist()),
        lam_bb_host=tuple(lam_bb.tolist()),
        raw=tuple(raw.tolist()),
    )


def lam_fallback(lam: Sequence[float] | Tensor, margin: float) -> bool:
    """Whether the classifier's mask becomes the constant λ (``lam_margin``), decided on the host.

    ``lam`` is the classifier's λ (``AdAutoMixDraw.lam_bb_host``); N = len(lam). The code's two tests differ
    at the upper end, and are copied as written, in float64:

    * N = 2 (``mixup``, line 548): ``margin >= lam[0] or margin >= 1 - lam[0]``;
    * N >= 3 (``co_mixup``, line 507): ``margin >= lam[0] or margin > 1 - lam[0]``.

    The constant mask is then λ_i for source i (the code fills only channels 0-2 for N >= 3, so for N > 3
    its later channels keep the generator's mask). ``margin`` 0 is the code's "off" (``lam_margin=-1``
    becomes 0), which still fires for a λ_0 of exactly 0 (or 1 when N = 2). The configs use 0.03.
    """
    ok = isinstance(margin, int | float) and not isinstance(margin, bool) and math.isfinite(margin)
    if not ok or not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be a number in [0, 0.5), got {margin!r}")
    if isinstance(lam, Tensor) and lam.device.type != "cpu":
        raise ValueError(f"lam must be on the host (reading a {lam.device} tensor would wait for the device)")
    if len(lam) < 2:
        raise ValueError(f"lam must hold the λ of n_sources >= 2 sources, got {len(lam)}")
    lam0 = float(lam[0])
    if len(lam) == 2:
        return margin >= lam0 or margin >= 1 - lam0
    return margin >= lam0 or margin > 1 - lam0
