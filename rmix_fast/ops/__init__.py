"""The ops, one module per op: its public function and its ``OpSpec`` (registered on every backend at
import). Kernels live in ``ops._triton.<op>`` and ``csrc/``, the ground truth in ``rmix_fast.reference.<op>``."""

from rmix_fast.ops._backends import BackendInfo, available_backends, resolve_backend
from rmix_fast.ops.blend_regions import BLEND, OWN, PARTNER, blend_regions, regions_from_mask
from rmix_fast.ops.blend_sources import blend_sources
from rmix_fast.ops.rmix import rmix, saliency_grid
from rmix_fast.ops.rmix_cells import rmix_cells
from rmix_fast.ops.sage import sage

__all__ = [
    "BLEND",
    "OWN",
    "PARTNER",
    "BackendInfo",
    "available_backends",
    "blend_regions",
    "blend_sources",
    "regions_from_mask",
    "resolve_backend",
    "rmix",
    "rmix_cells",
    "sage",
    "saliency_grid",
]
