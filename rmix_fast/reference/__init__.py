"""Pure-PyTorch references of the ops, one module per op: the ground truth for tests and the fallback
backend. Imports only torch and the ops' leaf modules (codes, dtypes), never a kernel."""

from rmix_fast.ops._dtypes import accumulate_dtype
from rmix_fast.ops._region_codes import BLEND, OWN, PARTNER
from rmix_fast.reference import blend_regions, blend_sources, rmix, sage
from rmix_fast.reference.blend_regions import *  # noqa: F403
from rmix_fast.reference.blend_sources import *  # noqa: F403
from rmix_fast.reference.rmix import *  # noqa: F403
from rmix_fast.reference.sage import *  # noqa: F403

__all__ = [
    "BLEND",
    "OWN",
    "PARTNER",
    "accumulate_dtype",
    *blend_regions.__all__,
    *blend_sources.__all__,
    *rmix.__all__,
    *sage.__all__,
]
