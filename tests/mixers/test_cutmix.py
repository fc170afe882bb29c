"""CutMix's own behaviour (the family's shared behaviour: ``test_mixer_family.py``)."""

from __future__ import annotations

import torch

import rmix_fast
from rmix_fast import BLEND, OWN, PARTNER, reference
from tests.helpers.mixer_cases import batch, make


def test_cutmix_uses_a_coarse_code_map_when_box_edges_allow():
    x, y, _ = batch(H=32, W=32)
    mixer = make(rmix_fast.CutMix)
    for _ in range(10):
        mixer(x, y)
        y0, y1, x0, x1 = mixer.last_params.box[0].tolist()
        regions = mixer.last_params.regions
        assert 32 % regions.shape[1] == 0 and 32 % regions.shape[2] == 0
        codes = reference.blend_regions._cells_to_pixels(regions, 32, 32)[:, 0]
        want = torch.full((6, 32, 32), OWN, dtype=torch.int8)
        want[:, y0:y1, x0:x1] = PARTNER
        assert torch.equal(codes.cpu(), want)
        assert BLEND not in codes
