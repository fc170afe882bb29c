"""The demo's speed table: the op and the paper-style baseline timed on the same inputs."""

from __future__ import annotations

import pytest
import torch

from rmix_fast.ops import resolve_backend
from rmix_fast.training.op_speed import op_speed


def test_op_speed_rows():
    rows = op_speed([(4, 3, 8, 8), (2, 1, 16, 12)], grid=2, reps=1)
    assert [r["shape"] for r in rows] == ["4x3x8x8", "2x1x16x12"]
    for r in rows:
        assert r["backend"] == resolve_backend("auto", torch.device("cpu"), 2)
        assert r["rmix_fast_ms"] > 0 and r["paper_ms"] > 0
        assert r["speedup"] == pytest.approx(r["paper_ms"] / r["rmix_fast_ms"])
