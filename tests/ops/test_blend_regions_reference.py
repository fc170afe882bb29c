"""The reference of the blend engine (``rmix_fast.reference.blend_regions``) against a per-pixel, float64
transcription of its definition."""

from __future__ import annotations

import torch

from rmix_fast import BLEND, OWN, reference
from tests.helpers.cases import DEVICE, make_case, make_regions


def literal_blend(x: torch.Tensor, regions: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Pixel by pixel, straight from the docstring (float64)."""
    B, C, H, W = x.shape
    gh, gw = regions.shape[1:]
    out = torch.empty(B, C, H, W, dtype=torch.float64)
    xd = x.double().cpu()
    for b in range(B):
        for h in range(H):
            for w in range(W):
                code = int(regions[b, h // (H // gh), w // (W // gw)])
                own, other = xd[b, :, h, w], xd[int(perm[b]), :, h, w]
                lb = float(lam[b])
                out[b, :, h, w] = lb * own + (1 - lb) * other if code == BLEND else (own if code == OWN else other)
    return out


def test_reference_matches_the_definition_pixel_by_pixel():
    case = make_case(B=5, H=12, W=10, dtype=torch.float64)
    regions = make_regions(5, 3, 5)
    lam = torch.rand(5, dtype=torch.float64, device=DEVICE)
    mixed, lam_eff = reference.blend_regions_forward(case.x, regions, case.perm, lam)
    torch.testing.assert_close(mixed.cpu(), literal_blend(case.x, regions, case.perm, lam))
    n_blend = (regions == BLEND).flatten(1).sum(1).double()
    n_own = (regions == OWN).flatten(1).sum(1).double()
    torch.testing.assert_close(lam_eff, ((n_blend * lam + n_own) / 15).float())
