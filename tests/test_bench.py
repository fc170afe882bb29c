"""bench/ as code: the paper-style baseline computes the op's function, and both benchmark scripts run end to
end on tiny CPU cases and write complete results. (Speed itself is never asserted here.)"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from rmix_fast import reference
from rmix_fast.sampling import paper_levels

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_rmix  # noqa: E402
import bench_step  # noqa: E402
import report  # noqa: E402
from paper_baseline import paper_input_gradient, paper_rmix  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape,grid", [((8, 3, 32, 32), 4), ((5, 1, 12, 20), 2), ((7, 4, 16, 16), 1), ((6, 3, 8, 8), 8)]
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_paper_baseline_matches_reference(dtype, shape, grid, channels_last):
    g = torch.Generator().manual_seed(sum(shape) + grid)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=fmt)
    grad = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=fmt)
    B = shape[0]
    perm = torch.randperm(B, generator=g)
    lam = torch.rand(B, generator=g, dtype=dtype)
    levels = paper_levels(10).to(dtype)
    q = levels[torch.randint(len(levels), (B,), generator=g)]
    q[0] = 0.0  # every cell top
    mixed, lam_eff = paper_rmix(x, grad, perm, lam, q, grid)
    want_mixed, want_lam_eff, mask = reference.rmix_forward(x, grad, perm, lam, q, grid)
    assert mask[0].all()
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(lam_eff, want_lam_eff, atol=tol, rtol=0)
    torch.testing.assert_close(mixed, want_mixed, atol=tol, rtol=tol)


def test_paper_input_gradient_is_the_input_gradient_and_clears_weight_grads():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 4, 2])
    loss_fn = torch.nn.functional.cross_entropy
    grad = paper_input_gradient(model, x, y, loss_fn, opt, nullcontext)
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(loss_fn(model(xr), y), xr)
    torch.testing.assert_close(grad, want)
    assert all(p.grad is None for p in model.parameters())


def test_bench_rmix_writes_every_figure(tmp_path):
    stem = tmp_path / "rmix"
    payload = bench_rmix.main(["--device", "cpu", "--shapes", "4x3x16x16", "--grids", "2", "16", "--layouts",
                               "channels_last", "--providers", "reference", "cpp", "paper", "compiled", "--reps", "2",
                               "--out", str(stem)])  # fmt: skip
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").stat().st_size > 0
    for key in ("device_name", "torch", "triton", "commit", "command", "allocator", "peak_copy_gbps", "cases"):
        assert key in saved, key
    assert saved["cases"] == json.loads(json.dumps(payload["cases"]))
    providers = {(r["grid"], r["provider"]) for r in saved["cases"]}
    assert providers == {(p, n) for p in (2, 16) for n in ("reference", "cpp", "paper", "compiled", "copy")}
    for r in saved["cases"]:
        assert r["time_ms"] > 0 and r["gbps"] > 0 and r["pct_copy"] > 0 and r["pct_peak"] > 0
        assert r["bytes"] == 4 * 4 * 3 * 16 * 16 * 4  # grad + 2 x + mixed, float32
        assert r["speedup_vs_paper"] > 0 and r["speedup_vs_reference"] > 0
        assert r["graph_ms"] is None and r["launches"] is None  # GPU-only figures
        if r["provider"] == "paper":
            assert r["speedup_vs_paper"] == 1.0
    assert saved["goals"] == []  # the goals are GPU goals
    table = report.main([str(stem.with_suffix(".json"))])
    assert "| 4×3×16×16 | float32 | channels_last | 16 |" in table and "cpp × paper" in table


def test_bench_rmix_rejects_unknown_provider():
    with pytest.raises(SystemExit, match="unknown provider"):
        bench_rmix.main(["--device", "cpu", "--providers", "nonsense", "--out", "/nonexistent/x"])


def test_bench_step_runs_every_method_and_measures_agreement(tmp_path):
    stem = tmp_path / "step"
    bench_step.main(["--device", "cpu", "--cases", "small_cnn:32:4:none:contiguous:10",
                     "small_cnn:32:4:bf16:channels_last:10", "--reps", "1", "--warmup", "1",
                     "--agreement", "small_cnn:32", "--agreement-steps", "3", "--agreement-images", "64", "24",
                     "--out", str(stem)])  # fmt: skip
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").stat().st_size > 0
    rows = saved["cases"]
    assert len(rows) == 2 * len(bench_step.METHODS)
    assert {r["method"] for r in rows} == set(bench_step.METHODS)
    for r in rows:
        assert r["time_ms"] > 0
        if r["method"] == "vanilla":
            assert r["ratio_to_vanilla"] == 1.0
    (agree,) = saved["mask_agreement"]
    assert agree["model"] == "small_cnn" and agree["levels"][0] == 0.0 and len(agree["levels"]) == 10
    for p in ("2", "4"):
        per = agree["per_grid"][p]
        assert per["agreement_per_level"][0] == 1.0  # q = 0: every cell is top in both masks
        assert per["regrouped_batch_per_level"][0] == 1.0
        assert all(0.0 <= v <= 1.0 for v in per["agreement_per_level"] + per["other_image_per_level"])
    assert 0.0 < agree["agreement"] <= 1.0
    table = report.main([str(stem.with_suffix(".json"))])
    assert "rmix_fast_half" in table and "Half-resolution mask agreement, small_cnn" in table


@pytest.mark.parametrize(
    "text",
    ["resnet50:224", "resnet50:224:128:fp8:channels_last", "resnet50:224:128:bf16:nhwc", "a:b:c:none:contiguous"],
)
def test_step_case_rejects_bad_specs(text):
    with pytest.raises((SystemExit, ValueError)):
        bench_step.parse_args(["--device", "cpu", "--cases", text])


def test_step_runner_rejects_unknown_method():
    runner = bench_step.StepRunner(bench_step.StepCase.parse("small_cnn:16:2:none:contiguous:3"), torch.device("cpu"))
    with pytest.raises(ValueError, match="method must be one of"):
        runner.step("puzzlemix")
