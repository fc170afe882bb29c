"""Pure-PyTorch reference implementations (ground truth for tests, CPU fallback)."""

from rmix_fast.reference.rmix import (
    accumulate_dtype,
    blend,
    blend_backward,
    cell_saliency,
    label_weight,
    lerp,
    percentile_threshold,
    rmix_backward,
    rmix_forward,
    saliency_mask,
)

__all__ = [
    "accumulate_dtype",
    "blend",
    "blend_backward",
    "cell_saliency",
    "label_weight",
    "lerp",
    "percentile_threshold",
    "rmix_backward",
    "rmix_forward",
    "saliency_mask",
]
