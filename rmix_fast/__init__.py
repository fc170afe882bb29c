"""rmix_fast: saliency-guided mixup (R-Mix) as fused kernels for PyTorch.

The library: the ops (``rmix_fast.ops``), their pure-PyTorch ground truth (``rmix_fast.reference``), the
mixers (``rmix_fast.mixers``), the saliency pass, the samplers, the losses and the mix pictures
(``rmix_fast.viz``). The training application (``rmix-train``, ``rmix-eval``, the demo) lives in
``rmix_fast.training``, which nothing here imports.

Set ``TRITON_INTERPRET=1`` *before* importing this package to run the Triton backend on CPU
tensors (the interpreter: exact, slow, for tests).
"""

from rmix_fast.losses import SoftTargetBCEWithLogits, SoftTargetCrossEntropy
from rmix_fast.mixers import (
    SAGE,
    AdAutoMix,
    AmortisedRMix,
    CutMix,
    ManifoldMixup,
    MixParams,
    Mixup,
    RLMix,
    RMix,
    soft_targets,
)
from rmix_fast.ops import (
    BLEND,
    OWN,
    PARTNER,
    BackendInfo,
    available_backends,
    blend_regions,
    blend_sources,
    regions_from_mask,
    rmix,
    rmix_cells,
    sage,
    saliency_grid,
)
from rmix_fast.saliency import clean_loss_backward, input_gradient
from rmix_fast.sampling import RMixParams, SageParams, sample_rmix_params, sample_sage_params

__version__ = "0.1.0"

__all__ = [
    "BLEND",
    "OWN",
    "PARTNER",
    "SAGE",
    "AdAutoMix",
    "AmortisedRMix",
    "BackendInfo",
    "CutMix",
    "ManifoldMixup",
    "MixParams",
    "Mixup",
    "RLMix",
    "RMix",
    "RMixParams",
    "SageParams",
    "SoftTargetBCEWithLogits",
    "SoftTargetCrossEntropy",
    "__version__",
    "available_backends",
    "blend_regions",
    "blend_sources",
    "clean_loss_backward",
    "input_gradient",
    "regions_from_mask",
    "rmix",
    "rmix_cells",
    "sage",
    "saliency_grid",
    "sample_rmix_params",
    "sample_sage_params",
    "soft_targets",
]
