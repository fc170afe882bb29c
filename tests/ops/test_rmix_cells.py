"""``rmix_cells``: R-Mix from a (B, p, p) cell-saliency map equals ``rmix`` on the gradient the map pools (its
mask, mixed images and ``lam_eff``, bit for bit) on every backend, for the normalised ``saliency_grid`` and
the unnormalised ``reference.cell_saliency``; its gradient is the blend's, and in float64 it routes the mixed
loss's gradient back to every original sample through its own image and its partner's (the gradient an
amortised saliency store reads from the training backward); bad input names the argument; ``validate=False``
reads nothing back."""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from rmix_fast import reference
from rmix_fast.ops._region_codes import BLEND, OWN, PARTNER
from tests.helpers.cases import BACKENDS, DEVICE, TRITON_INTERPRETED, as_tensor, assert_blend_equal, layout, make_case
from tests.helpers.sync_probe import HostReadProbe

# The Triton interpreter is slow: it runs only in test_triton_interpreted_equals_rmix (slow tier).
QUICK_BACKENDS = [b for b in BACKENDS if not (b == "triton" and TRITON_INTERPRETED)]
CELL_MAPS = {
    "saliency_grid": lambda grad, p: rmix_fast.saliency_grid(grad, p),
    "cell_saliency": lambda grad, p: reference.cell_saliency(grad, p),
}


def assert_equals_rmix(backend: str, case, cells: torch.Tensor) -> None:
    """rmix_cells(x, cells) gives rmix(x, grad)'s mask, mixed and lam_eff on ``backend``, bit for bit."""
    want = rmix_fast.rmix(case.x, case.grad, **case.kwargs(), backend=backend, return_mask=True)
    kwargs = {k: v for k, v in case.kwargs().items() if k != "grid"}
    got = rmix_fast.rmix_cells(case.x, cells, **kwargs, backend=backend, return_mask=True)
    mixed, lam_eff, mask = got
    assert mask.shape == (case.x.shape[0], case.grid, case.grid) and mask.dtype == torch.bool
    assert torch.equal(mask, want[2]), f"{backend}: masks differ in {int((mask != want[2]).sum())} cells"
    assert mixed.dtype == case.x.dtype and mixed.stride() == want[0].stride()
    assert_blend_equal(backend, mixed, want[0])
    assert lam_eff.dtype == torch.float32 and torch.equal(lam_eff, want[1])
    # and the blend engine on the same regions hands back rmix's lam_eff too
    lam = as_tensor(case.lam, case.x.shape[0], reference.accumulate_dtype(case.x.dtype), DEVICE)
    regions = rmix_fast.regions_from_mask(mask, case.perm)
    _, blend_lam_eff = rmix_fast.blend_regions(case.x, perm=case.perm, lam=lam, regions=regions, backend=backend)
    assert torch.equal(blend_lam_eff, want[1])


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
@pytest.mark.parametrize("cells_of", list(CELL_MAPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last", "strided"])
def test_equals_rmix(backend, cells_of, dtype, x_layout):
    case = make_case(5, 3, 12, 20, grid=4, dtype=dtype, x_layout=x_layout, seed=1)
    assert_equals_rmix(backend, case, CELL_MAPS[cells_of](case.grad, case.grid))


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
@pytest.mark.parametrize("H,W,grid", [(32, 32, 1), (32, 32, 8), (16, 48, 8), (24, 8, 4), (10, 14, 2), (6, 9, 3)])
def test_grids_and_non_square_images(backend, H, W, grid):
    case = make_case(4, 2, H, W, grid=grid, seed=2)
    for cells_of in CELL_MAPS.values():
        assert_equals_rmix(backend, case, cells_of(case.grad, grid))


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
@pytest.mark.parametrize("B", [1, 2, 33])
def test_batch_sizes(backend, B):
    case = make_case(B, 3, 8, 8, grid=2 if B > 2 else 4, seed=3)
    assert_equals_rmix(backend, case, rmix_fast.saliency_grid(case.grad, case.grid))


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
@pytest.mark.parametrize("x_dtype,grad_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float64)],
                         ids=str)  # fmt: skip
def test_gradient_dtype_differs_from_x(backend, x_dtype, grad_dtype):
    case = make_case(6, 3, 8, 8, grid=4, dtype=x_dtype, grad_dtype=grad_dtype, seed=4)
    assert_equals_rmix(backend, case, rmix_fast.saliency_grid(case.grad, case.grid))


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
@pytest.mark.parametrize("kind", ["strided", "transposed-storage", "expanded-batch"])
def test_cells_through_their_strides(backend, kind):
    case = make_case(4, 3, 16, 16, grid=4, seed=5)
    if kind == "expanded-batch":  # one sample's gradient for the whole batch
        case.grad = case.grad[:1].expand_as(case.grad).contiguous()
    dense = rmix_fast.saliency_grid(case.grad, 4)
    if kind == "strided":  # every other column of a wider map
        wide = torch.zeros(4, 4, 8, dtype=dense.dtype, device=DEVICE)
        wide[..., ::2] = dense
        cells = wide[..., ::2]
    elif kind == "transposed-storage":  # the same values, columns contiguous in memory
        cells = dense.transpose(1, 2).contiguous().transpose(1, 2)
    else:  # its map for the whole batch, stride 0 over the batch
        cells = dense[:1].expand(4, 4, 4)
    assert not cells.is_contiguous()
    assert_equals_rmix(backend, case, cells)


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
@pytest.mark.parametrize("kind", ["0-d", "python", "per-sample", "endpoints"])
def test_lam_and_q_forms(backend, kind):
    case = make_case(6, 3, 8, 12, grid=4, seed=6)
    if kind == "0-d":
        case.lam, case.q = torch.tensor(0.37, device=DEVICE), torch.tensor(0.55, device=DEVICE)
    elif kind == "python":
        case.lam, case.q = 0.37, 0.55
    elif kind == "endpoints":
        case.lam, case.q = 1.0, 0.0
    assert_equals_rmix(backend, case, rmix_fast.saliency_grid(case.grad, case.grid))


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
def test_ties_zero_and_non_finite_maps(backend):
    """Tied, zero and non-finite saliency: all-top where rmix is all-top (saliency_grid makes a zero or
    non-finite sample uniform, cell_saliency keeps it: both give rmix's mask)."""
    case = make_case(6, 3, 16, 16, grid=4, seed=7)
    g = case.grad.clone()
    g[0] = 1.0
    g[1, :, :8], g[1, :, 8:] = 2.0, 1.0
    g[2] = 0.0
    g[3, 1, 5, 5] = float("inf")
    g[4, 0, 0, 0] = float("nan")
    case.grad = g
    for cells_of in CELL_MAPS.values():
        assert_equals_rmix(backend, case, cells_of(g, 4))
    _, _, mask = rmix_fast.rmix_cells(case.x, reference.cell_saliency(g, 4), perm=case.perm, lam=case.lam,
                                      q=case.q, backend=backend, return_mask=True)  # fmt: skip
    assert mask[2:5].all() and mask[0].all()


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
def test_a_samples_scale_does_not_change_its_mask(backend):
    case = make_case(5, 3, 16, 16, grid=4, seed=8)
    cells = reference.cell_saliency(case.grad, 4)
    scale = torch.tensor([1.0, 2.0**-20, 2.0**30, 0.5, 8.0], device=DEVICE).view(-1, 1, 1)  # exact in float32
    assert_equals_rmix(backend, case, cells * scale)


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
def test_stored_float16_maps_of_a_wide_spread(backend):
    """A store keeps maps in float16: normalised maps of a fresh gradient still give rmix's mask when no two
    cells are within float16 rounding of each other (here: cells a factor 1.5 apart)."""
    case = make_case(3, 1, 8, 8, grid=4, seed=9)
    levels = 1.5 ** torch.randperm(16, generator=torch.Generator().manual_seed(0)).double()
    grad = levels.view(1, 1, 4, 1, 4, 1).expand(3, 1, 4, 2, 4, 2).reshape(3, 1, 8, 8)
    case.grad = (grad * torch.tensor([1.0, 3.0, 1e-3], dtype=torch.float64).view(3, 1, 1, 1)).float().to(DEVICE)
    assert_equals_rmix(backend, case, rmix_fast.saliency_grid(case.grad, 4).half())


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last"])
def test_gradient_is_the_blends(backend, dtype, x_layout):
    case = make_case(6, 3, 8, 12, grid=4, dtype=dtype, x_layout=x_layout, seed=10)
    x = case.x.detach().clone().requires_grad_()
    cells = rmix_fast.saliency_grid(case.grad, 4).requires_grad_()
    mixed, lam_eff, mask = rmix_fast.rmix_cells(x, cells, perm=case.perm, lam=case.lam, q=case.q, backend=backend,
                                                return_mask=True)  # fmt: skip
    assert not lam_eff.requires_grad and not mask.requires_grad
    grad_out = layout(torch.randn(mixed.shape, generator=torch.Generator().manual_seed(11)).to(dtype), x_layout)
    mixed.backward(grad_out.to(DEVICE))
    lam = as_tensor(case.lam, 6, reference.accumulate_dtype(dtype), DEVICE)
    want = reference.blend_regions_backward(grad_out.to(DEVICE), reference.regions_from_mask(mask, case.perm),
                                            case.perm, lam)  # fmt: skip
    assert_blend_equal(backend, x.grad, want)
    assert cells.grad is None, "the threshold is not differentiable: no gradient may reach the cell map"


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
def test_routed_gradient_equals_autograd_in_float64(backend):
    """The training backward of a mixed loss with the un-mixed batch requiring grad gives every original sample
    the gradient of the loss w.r.t. it: d loss/d mixed routed through its own image (weight lam / 1 / 0 in
    BLEND / OWN / PARTNER cells) and through the image it is the partner of (1 - lam / 0 / 1)."""
    B, C, H, W, K = 6, 3, 8, 12, 5
    case = make_case(B, C, H, W, grid=4, dtype=torch.float64, seed=12)
    g = torch.Generator().manual_seed(13)
    weight, bias = torch.randn(K, C * H * W, generator=g, dtype=torch.float64), torch.randn(K, dtype=torch.float64)
    weight, bias = weight.to(DEVICE), bias.to(DEVICE)
    y = torch.randint(K, (B,), generator=g).to(DEVICE)
    cells = rmix_fast.saliency_grid(case.grad, 4)

    def mixed_loss(x):
        mixed, lam_eff, mask = rmix_fast.rmix_cells(x, cells, perm=case.perm, lam=case.lam, q=case.q,
                                                    backend=backend, return_mask=True)  # fmt: skip
        targets = rmix_fast.soft_targets(y, K).double()
        y_soft = lam_eff.double()[:, None] * targets + (1 - lam_eff.double()[:, None]) * targets[case.perm]
        logits = mixed.flatten(1) @ weight.T + bias
        return -(y_soft * torch.log_softmax(logits, dim=1)).sum(dim=1).mean(), mixed, mask

    x = case.x.detach().clone().requires_grad_()
    loss, mixed, mask = mixed_loss(x)
    (want,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g_mix,) = torch.autograd.grad(loss, mixed, retain_graph=True)
    loss.backward()  # the training backward populates x.grad
    torch.testing.assert_close(x.grad, want, rtol=0, atol=1e-12)

    # by hand, from the region codes: x[b] gets w_own * g_mix[b] and, where b = perm[s], w_partner * g_mix[s]
    regions = rmix_fast.regions_from_mask(mask, case.perm)
    lam = as_tensor(case.lam, B, torch.float64, DEVICE).view(B, 1, 1)
    w_own = torch.where(regions == BLEND, lam, (regions == OWN).double())
    w_partner = torch.where(regions == BLEND, 1 - lam, (regions != OWN).double())
    to_pixels = lambda w: w.repeat_interleave(H // 4, 1).repeat_interleave(W // 4, 2).unsqueeze(1)  # noqa: E731
    routed = to_pixels(w_own) * g_mix
    routed = routed.index_add(0, case.perm, to_pixels(w_partner) * g_mix)
    torch.testing.assert_close(x.grad, routed, rtol=0, atol=1e-12)
    assert all((regions == code).any() for code in (BLEND, OWN, PARTNER)), "the case must route through every code"


@pytest.mark.parametrize("backend", QUICK_BACKENDS)
def test_zero_batch(backend):
    x = torch.empty(0, 3, 8, 8, device=DEVICE)
    perm = torch.empty(0, dtype=torch.long, device=DEVICE)
    mixed, lam_eff, mask = rmix_fast.rmix_cells(x, torch.empty(0, 2, 2, device=DEVICE), perm=perm, lam=0.5, q=0.5,
                                                backend=backend, return_mask=True)  # fmt: skip
    assert mixed.shape == x.shape and lam_eff.shape == (0,) and lam_eff.dtype == torch.float32
    assert mask.shape == (0, 2, 2) and mask.dtype == torch.bool


@pytest.mark.parametrize("backend", [b for b in QUICK_BACKENDS if DEVICE.type == "cpu"])
def test_validate_false_reads_nothing_back(backend):
    case = make_case(6, 3, 16, 16, grid=4, seed=14)
    cells = rmix_fast.saliency_grid(case.grad, 4)
    kwargs = {k: v for k, v in case.kwargs().items() if k != "grid"}
    with HostReadProbe() as probe:
        mixed, _ = rmix_fast.rmix_cells(case.x.requires_grad_(), cells, **kwargs, backend=backend, validate=False)
        mixed.sum().backward()
    assert not probe.reads, "\n".join(map(str, probe.reads))
    with HostReadProbe() as probe:
        rmix_fast.rmix_cells(case.x, cells, **kwargs, backend=backend)
    assert len(probe.reads) == 1, "validate=True reads its checks back once"


B, C, H, W = 4, 3, 8, 12


def good(**over):
    kw = {
        "x": torch.randn(B, C, H, W, device=DEVICE),
        "cells": torch.rand(B, 4, 4, device=DEVICE),
        "perm": torch.tensor([1, 0, 3, 2], device=DEVICE),
        "lam": 0.5,
        "q": 0.5,
    }
    kw.update(over)
    return kw


BAD = [
    ({"cells": torch.rand(B, 16, device=DEVICE)}, ValueError, r"cells must be a square \(B, p, p\) map"),
    ({"cells": torch.rand(B, 1, 4, 4, device=DEVICE)}, ValueError, r"cells must be a square \(B, p, p\) map"),
    ({"cells": torch.rand(B, 2, 4, device=DEVICE)}, ValueError, r"cells must be a square .* got shape \(4, 2, 4\)"),
    ({"cells": torch.rand(B, 0, 0, device=DEVICE)}, ValueError, "cells must be a square"),
    ({"cells": torch.rand(B, 3, 3, device=DEVICE)}, ValueError, "cells' grid p=3 must divide both H=8 and W=12"),
    ({"cells": torch.rand(B, 8, 8, device=DEVICE)}, ValueError, "cells' grid p=8 must divide both"),
    ({"cells": torch.rand(B + 1, 4, 4, device=DEVICE)}, ValueError, "cells must have x's batch size 4"),
    ({"cells": torch.ones(B, 4, 4, dtype=torch.int64, device=DEVICE)}, TypeError, "cells must be float"),
    ({"cells": torch.ones(B, 4, 4, dtype=torch.bool, device=DEVICE)}, TypeError, "cells must be float"),
    ({"cells": [[0.5]]}, TypeError, "cells must be a torch.Tensor"),
    ({"x": torch.randn(B, H, W, device=DEVICE)}, ValueError, "x must be 4-D"),
    ({"perm": torch.tensor([1, 0, 3], device=DEVICE)}, ValueError, "perm must have shape"),
    ({"perm": torch.tensor([1.0, 0.0, 3.0, 2.0], device=DEVICE)}, TypeError, "perm must be an integer"),
    ({"perm": torch.tensor([1, 0, 3, 4], device=DEVICE)}, ValueError, r"perm must hold indices in \[0, 3\]"),
    ({"perm": torch.tensor([1, 1, 3, 2], device=DEVICE)}, ValueError, "perm must be a permutation"),
    ({"lam": 1.5}, ValueError, r"lam must lie in \[0, 1\]"),
    ({"lam": torch.tensor([0.1, 0.2, 1.2, 0.3], device=DEVICE)}, ValueError, "lam must lie in"),
    ({"q": torch.tensor(-0.5, device=DEVICE)}, ValueError, "q must lie in"),
    ({"q": torch.tensor([0.5, float("nan"), 0.1, 0.2], device=DEVICE)}, ValueError, "q must lie in"),
    ({"q": torch.rand(4, 1, device=DEVICE)}, ValueError, "q must be a Python float or a tensor of shape"),
    ({"q": "0.5"}, TypeError, "q must be a Python float"),
]
if DEVICE.type == "cpu":
    meta = torch.device("meta")  # a second device that exists everywhere
    BAD += [({"cells": torch.rand(B, 4, 4, device=meta)}, ValueError, "cells is on meta but x is on cpu")]


@pytest.mark.parametrize("over,exc,msg", BAD, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_raises(over, exc, msg):
    kw = good(**over)
    with pytest.raises(exc, match=msg):
        rmix_fast.rmix_cells(kw.pop("x"), kw.pop("cells"), **kw, backend="reference")


def test_bad_backend_raises_before_any_check_reads():
    kw = good()
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        rmix_fast.rmix_cells(kw.pop("x"), kw.pop("cells"), **kw, backend="cuda-magic")


@pytest.mark.slow
@pytest.mark.skipif(not TRITON_INTERPRETED, reason="the compiled Triton backend runs in the quick tier")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_triton_interpreted_equals_rmix(dtype):
    case = make_case(5, 3, 12, 20, grid=4, dtype=dtype, x_layout="channels_last", seed=15)
    for cells_of in CELL_MAPS.values():
        assert_equals_rmix("triton", case, cells_of(case.grad, case.grid))
