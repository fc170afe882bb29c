"""AdAutoMix (Qin et al., ICLR 2024): the pieces of its mixer."""

from rmix_fast.adautomix.draws import AdAutoMixDraw, lam_fallback, sample_adautomix
from rmix_fast.adautomix.ema import EmaTeacher, ema_momentum, ema_update_, frozen_copy

__all__ = [
    "AdAutoMixDraw",
    "EmaTeacher",
    "ema_momentum",
    "ema_update_",
    "frozen_copy",
    "lam_fallback",
    "sample_adautomix",
]
