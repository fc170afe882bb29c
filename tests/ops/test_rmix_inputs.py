"""Bad input: a ValueError/TypeError naming the argument, before any kernel runs."""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from tests.helpers.cases import BACKENDS, DEVICE

B, C, H, W = 4, 3, 8, 8


def good(**over):
    kw = {
        "x": torch.randn(B, C, H, W, device=DEVICE),
        "grad": torch.randn(B, C, H, W, device=DEVICE),
        "perm": torch.tensor([1, 0, 3, 2], device=DEVICE),
        "lam": 0.5,
        "q": 0.5,
        "grid": 2,
    }
    kw.update(over)
    return kw


def call(backend, kw):
    x, grad = kw.pop("x"), kw.pop("grad")
    return rmix_fast.rmix(x, grad, **kw, backend=backend)


CASES = [
    # (overrides, exception, message fragment)
    ({"x": torch.randn(B, C, H, device=DEVICE)}, ValueError, "x must be 4-D"),
    ({"x": torch.ones(B, C, H, W, dtype=torch.int64, device=DEVICE)}, TypeError, "x must be float"),
    ({"x": [[1.0]]}, TypeError, "x must be a torch.Tensor"),
    ({"grad": torch.randn(B, C, H, W + 1, device=DEVICE)}, ValueError, "grad must have x's shape"),
    ({"grad": torch.ones(B, C, H, W, dtype=torch.int32, device=DEVICE)}, TypeError, "grad must be float"),
    ({"perm": torch.tensor([1.0, 0.0, 3.0, 2.0], device=DEVICE)}, TypeError, "perm must be an integer"),
    ({"perm": torch.tensor([True, False, True, False], device=DEVICE)}, TypeError, "perm must be an integer"),
    ({"perm": torch.tensor([1, 0, 2], device=DEVICE)}, ValueError, "perm must have shape"),
    ({"perm": torch.tensor([[1, 0, 3, 2]], device=DEVICE)}, ValueError, "perm must have shape"),
    ({"perm": torch.tensor([1, 0, 3, 4], device=DEVICE)}, ValueError, r"perm must hold indices in \[0, 3\]"),
    ({"perm": torch.tensor([1, 0, -1, 2], device=DEVICE)}, ValueError, "perm must hold indices"),
    ({"perm": torch.tensor([1, 1, 3, 2], device=DEVICE)}, ValueError, "perm must be a permutation"),
    ({"perm": [1, 0, 3, 2]}, TypeError, "perm must be an integer torch.Tensor"),
    ({"lam": 1.5}, ValueError, r"lam must lie in \[0, 1\]"),
    ({"lam": float("nan")}, ValueError, "lam must lie in"),
    ({"lam": "0.5"}, TypeError, "lam must be a Python float"),
    ({"lam": torch.tensor([0.1, 0.2, 1.2, 0.3], device=DEVICE)}, ValueError, "lam must lie in"),
    (
        {"lam": torch.tensor([0.1, 0.2], device=DEVICE)},
        ValueError,
        r"lam must be a Python float or a tensor of shape \(4,\)",
    ),
    ({"lam": torch.tensor([0, 1, 0, 1], device=DEVICE)}, TypeError, "lam must be a float tensor"),
    ({"q": -0.1}, ValueError, "q must lie in"),
    ({"q": torch.tensor([0.5, float("nan"), 0.1, 0.2], device=DEVICE)}, ValueError, "q must lie in"),
    ({"q": torch.rand(4, 1, device=DEVICE)}, ValueError, "q must be a Python float or a tensor of shape"),
    ({"grid": 0}, ValueError, "grid must be >= 1"),
    ({"grid": 3}, ValueError, "grid=3 must divide both H=8 and W=8"),
    ({"grid": 2.0}, TypeError, "grid must be an int"),
    ({"grid": True}, TypeError, "grid must be an int"),
]
if DEVICE.type == "cpu":
    meta = torch.device("meta")  # a second device that exists everywhere
    CASES += [
        ({"grad": torch.randn(B, C, H, W, device=meta)}, ValueError, "grad is on meta but x is on cpu"),
        ({"perm": torch.tensor([1, 0, 3, 2], device=meta)}, ValueError, "perm is on meta"),
        ({"lam": torch.rand(4, device=meta)}, ValueError, "lam is on meta"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("over,exc,msg", CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_raises(backend, over, exc, msg):
    with pytest.raises(exc, match=msg):
        call(backend, good(**over))


def test_unknown_and_unavailable_backend():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        call("cuda-magic", good())
    with pytest.raises(TypeError, match="backend must be a str"):
        call(None, good())
    infos = rmix_fast.available_backends(DEVICE)
    for name, info in infos.items():
        if not info.available:
            with pytest.raises(ValueError, match=f"backend '{name}' is unavailable on"):
                call(name, good())


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable here")
def test_triton_grid_limit_is_explicit():
    from rmix_fast.ops._triton.rmix import MAX_GRID

    p = 2 * MAX_GRID
    kw = good(x=torch.randn(2, 1, p, p, device=DEVICE), grad=torch.randn(2, 1, p, p, device=DEVICE),
              perm=torch.tensor([1, 0], device=DEVICE), grid=p)  # fmt: skip
    with pytest.raises(ValueError, match=f"supports grid <= {MAX_GRID}"):
        call("triton", dict(kw))
    mixed, _ = call("auto", dict(kw))  # auto falls back instead
    assert mixed.shape == (2, 1, p, p)


def test_validate_false_skips_only_content_checks():
    kw = good(perm=torch.tensor([0, 0, 1, 2], device=DEVICE))
    x, grad = kw.pop("x"), kw.pop("grad")
    rmix_fast.rmix(x, grad, **kw, backend="reference", validate=False)  # caller vouches for perm
    with pytest.raises(ValueError, match="grid"):
        rmix_fast.rmix(x, grad, **{**kw, "grid": 3}, backend="reference", validate=False)
