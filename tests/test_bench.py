"""bench/ as code: the paper-style baseline computes the op's function; the runner and every script run end to
end on tiny CPU cases and write complete results (JSON and PNG); bad cases and providers are refused; the
report renders every recorded result file. Speed itself is never asserted."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

import rmix_fast
from rmix_fast import BLEND, OWN, PARTNER, clean_loss_backward, reference, soft_targets
from rmix_fast.reference.blend_sources import blend_sources_forward
from rmix_fast.reference.sage import sage_forward
from rmix_fast.sampling import paper_levels, sample_sage_params

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_blend_regions  # noqa: E402
import bench_blend_sources  # noqa: E402
import bench_rmix  # noqa: E402
import bench_sage  # noqa: E402
import bench_step  # noqa: E402
import common  # noqa: E402
import report  # noqa: E402
from baselines import sage_paper  # noqa: E402
from baselines.blend_sources_paper import paper_blend_sources  # noqa: E402
from baselines.rmix_paper import paper_input_gradient, paper_rmix  # noqa: E402
from studies import mask_agreement  # noqa: E402

CPU = torch.device("cpu")
HAS_CPP = rmix_fast.available_backends(CPU)["cpp"].available
FAST_CPU = ["cpp"] if HAS_CPP else []
PER_ROW = ("time_ms", "gbps", "pct_copy", "pct_peak", "copy_gbps")  # figures every row has on every device
GPU_ONLY = ("graph_ms", "graph_gbps", "graph_pct_copy", "graph_pct_peak", "launches")
ENVIRONMENT = ("device", "device_name", "torch", "triton", "commit", "command", "allocator", "date")


def check_op_results(
    stem: Path, payload: dict, bench: str, case_keys: list[str], record: tuple[str, ...] = ("lam",)
) -> list[dict]:
    """The JSON equals the payload, holds the environment, the op's constants (``record``) and the run's figures,
    and every row has every figure of a CPU run; the PNG exists. Returns the rows."""
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").stat().st_size > 0
    assert saved == json.loads(json.dumps(payload))
    for key in (*ENVIRONMENT, "peak_copy_gbps", "byte_model", "reps", *record, "providers"):
        assert saved[key] is not None, key
    assert saved["bench"] == bench and saved["schema"] == common.SCHEMA and saved["complete"] is True
    assert saved["case_keys"] == case_keys and saved["providers"][-1] == "copy"
    for r in saved["cases"]:
        for key in PER_ROW:
            assert r[key] > 0, key
        for key in GPU_ONLY:
            assert r[key] is None, key
        for base in saved["speedup_over"]:
            assert r[f"speedup_vs_{base}"] > 0
            if r["provider"] == base:
                assert r[f"speedup_vs_{base}"] == 1.0
        if r["provider"] == "copy":
            assert r["pct_copy"] == pytest.approx(100.0)
    assert saved["goals"] == []  # no goal of these benchmarks applies to a CPU run
    return saved["cases"]


# ------------------------------------------------------------------------------------- the baseline


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,rand_pos", [((6, 3, 16, 16), 0.05), ((5, 1, 8, 8), 0.2), ((1, 3, 12, 12), 0.05)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sage_paper_baseline_matches_reference(dtype, shape, rand_pos, channels_last):
    """The published loop and the op's reference pick the same shifts and give the same mix: the baseline is
    the op's function, computed the slow way."""
    B, _, H, W = shape
    g = torch.Generator().manual_seed(sum(shape))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=fmt)
    grad = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=fmt)
    p = sample_sage_params(B, H, W, rand_pos=rand_pos, generator=g)
    lam = float(p.lam[0])
    mixed, lam_eff, shift = sage_paper.paper_sage(x, grad, p.perm, lam, p.offsets)
    want_mixed, want_lam_eff, want_shift, _ = sage_forward(x, grad, p.perm, p.lam.to(dtype), p.offsets, 1.0, 5)
    assert torch.equal(shift, want_shift)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(mixed, want_mixed, atol=tol, rtol=tol)
    torch.testing.assert_close(lam_eff.float(), want_lam_eff, atol=tol, rtol=0)


def test_sage_paper_refuses_non_square_images():
    x = torch.randn(2, 1, 8, 6)
    with pytest.raises(ValueError, match="square"):
        sage_paper.paper_sage(x, x, torch.tensor([1, 0]), 0.3, torch.zeros(1, 2, dtype=torch.int64))


def _allocated_peak(fn) -> int:
    """The peak of the bytes allocated and not yet freed during ``fn()`` on the CPU, from torch.profiler's memory
    events in time order (the output freed before the profile ends)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("B,C,W,K", [(4, 3, 8, 20), (3, 1, 16, 200), (16, 3, 12, 5), (40, 1, 10, 50), (64, 3, 12, 3)])
def test_sage_paper_peak_prediction_is_what_it_allocates(B, C, W, K):
    """The memory wall the benchmark reports is the baseline's own: its predicted peak equals what it allocates,
    whichever phase dominates (the loop's K canvases, or the batch's after it when B is large)."""
    g = torch.Generator().manual_seed(B + W)
    x, grad = torch.randn(B, C, W, W, generator=g), torch.randn(B, C, W, W, generator=g)
    offsets = torch.randint(-W + 1, W, (K, 2), generator=g)
    measured = _allocated_peak(lambda: sage_paper.paper_sage(x, grad, torch.randperm(B, generator=g), 0.3, offsets))
    assert sage_paper.peak_bytes(B, C, W, K) == pytest.approx(measured, rel=0.01)


def test_sage_paper_plan_reports_the_memory_wall_at_224():
    # (K, 1, 3W, 3W) float32 at W = 224, K = 1998: 3.6 GB per tensor, eight of them alive in the loop
    assert 4 * 1998 * (3 * 224) ** 2 == pytest.approx(3.61e9, rel=1e-3)
    wall = sage_paper.peak_bytes(64, 3, 224, 1998)
    assert 28.9e9 < wall < 30e9 and sage_paper.peak_bytes(1, 3, 224, 1998) > 28.8e9  # whatever the batch size
    plan = sage_paper.plan((64, 3, 224, 224), 1998, CPU)
    assert not plan.fits and plan.budget <= sage_paper.CPU_CAP_BYTES
    assert plan.note.startswith("skipped: needs 29.8 GB (") and "CPU cap" in plan.note
    assert sage_paper.plan((100, 3, 32, 32), 39, CPU).note == "timed"
    assert sage_paper.plan((64, 3, 224, 224), 1998, CPU, max_bytes=40 << 30).fits


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("N,shape,scale", [(3, (5, 3, 32, 32), 4), (2, (3, 2, 32, 48), 16), (1, (2, 1, 8, 8), 2)])
def test_blend_sources_paper_baseline_matches_reference(N, shape, scale, layout):
    """In float64 the published ops give the reference's mix (same interpolation, softmax, order of the sum)."""
    g = torch.Generator().manual_seed(N)
    B, _, H, W = shape
    x = torch.randn(shape, generator=g, dtype=torch.float64).contiguous(memory_format=layout)
    index = torch.stack([torch.arange(B), *(torch.randperm(B, generator=g) for _ in range(N - 1))])
    logits = 3 * torch.randn(B, N, H // scale, W // scale, generator=g, dtype=torch.float64)
    got = paper_blend_sources(x, index, logits, scale)
    want = blend_sources_forward(x, index, logits, scale, "bilinear", "softmax")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, rmix_fast.blend_sources(x, index=index, logits=logits, scale=scale))


# -------------------------------------------------------------------------------- the op benchmarks


@pytest.mark.slow
def test_bench_rmix_writes_every_figure(tmp_path):
    stem = tmp_path / "rmix"
    providers = ["reference", *FAST_CPU, "paper", "compiled"]
    payload = bench_rmix.main(["--device", "cpu", "--shapes", "4x3x16x16", "--grids", "2", "16", "3",
                               "--layouts", "channels_last", "--providers", *providers, "--reps", "2",
                               "--out", str(stem)])  # fmt: skip
    rows = check_op_results(stem, payload, "rmix", ["shape", "dtype", "layout", "grid"])
    # grid 3 does not divide 16: left out
    assert {(r["grid"], r["provider"]) for r in rows} == {(p, n) for p in (2, 16) for n in [*providers, "copy"]}
    for r in rows:
        assert r["bytes"] == 4 * 4 * 3 * 16 * 16 * 4  # grad + 2 x + mixed, float32
    table = report.main([str(stem.with_suffix(".json"))])
    assert "| 4×3×16×16 | float32 | channels_last | 16 |" in table and "× paper" in table


@pytest.mark.slow  # a benchmark run end to end
def test_bench_rmix_leaves_compiled_out_of_non_float32_cases(tmp_path):
    payload = bench_rmix.main(["--device", "cpu", "--shapes", "2x1x4x4", "--grids", "2", "--dtypes", "float64",
                               "--layouts", "contiguous", "--providers", "reference", "compiled", "--reps", "1",
                               "--out", str(tmp_path / "rmix")])  # fmt: skip
    assert [r["provider"] for r in payload["cases"]] == ["reference", "copy"]


@pytest.mark.slow  # a benchmark run end to end
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_blend_regions_writes_every_figure(tmp_path, dtype):
    stem = tmp_path / "blend"
    providers = ["reference", *FAST_CPU, "triton"]  # triton runs in the interpreter here, named explicitly
    payload = bench_blend_regions.main(["--device", "cpu", "--shapes", "2x3x8x8", "--dtypes", dtype, "--regions",
                                        "mixup", "cutmix:4", "rmix:2", "rmix:8", "rmix:3", "--providers", *providers,
                                        "--reps", "1", "--out", str(stem)])  # fmt: skip
    rows = check_op_results(stem, payload, "blend_regions", ["shape", "dtype", "layout", "regions"])
    cases = {(r["layout"], r["regions"]) for r in rows}  # rmix:3 does not divide 8: left out
    maps = ("mixup", "cutmix:4", "rmix:2", "rmix:8")
    assert cases == {(lay, m) for lay in ("contiguous", "channels_last") for m in maps}
    assert {r["provider"] for r in rows} == {*providers, "copy"}
    x_bytes = 2 * 3 * 8 * 8 * torch.empty((), dtype=getattr(torch, dtype)).element_size()
    extra = 2 * 8 + 2 * 4  # perm (int64) + lam_eff (float32)
    by_map = {r["regions"]: r["bytes"] for r in rows}
    assert by_map["mixup"] == 3 * x_bytes + 2 * 1 + extra  # both images, one code per sample, mixed
    assert by_map["cutmix:4"] == 2 * x_bytes + 2 * 16 + extra  # one source per cell
    table = report.main([str(stem.with_suffix(".json"))])
    assert f"| 2×3×8×8 | {dtype} | NCHW | cutmix:4 |" in table and "regions" in table


@pytest.mark.slow  # a benchmark run end to end
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_blend_sources_writes_every_figure(tmp_path, dtype):
    """Tiny cases in AdAutoMix's two settings (N = 3, scale 4 up to 64 px; N = 2, scale 16 above), the published
    ops timed beside every backend; a scale that does not divide the image leaves the shape out."""
    stem = tmp_path / "sources"
    providers = ["reference", *FAST_CPU, "triton", "published"]  # triton interpreted here, named explicitly
    payload = bench_blend_sources.main(["--device", "cpu", "--shapes", "2x3x8x8", "2x1x96x80", "2x3x6x6",
                                        "--dtypes", dtype, "--providers", *providers, "--reps", "1", "--warmup",
                                        "1", "--out", str(stem)])  # fmt: skip
    keys = ["shape", "dtype", "layout", "sources", "scale"]
    rows = check_op_results(stem, payload, "blend_sources", keys, record=("mode", "normalize"))
    assert payload["speedup_over"] == ["published", "reference"]
    cases = {(r["shape"], r["layout"], r["sources"], r["scale"], r["logits"]) for r in rows}  # 6 % 4: left out
    assert cases == {(s, lay, *rest) for lay in ("contiguous", "channels_last")
                     for s, *rest in (("2x3x8x8", 3, 4, "2x2"), ("2x1x96x80", 2, 16, "6x5"))}  # fmt: skip
    assert {r["provider"] for r in rows} == {*providers, "copy"}
    item = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    for r in rows:
        _, C, H, W = map(int, r["shape"].split("x"))
        N, s = r["sources"], r["scale"]
        assert r["bytes"] == (N + 1) * 2 * C * H * W * item + 2 * N * (H // s) * (W // s) * item
    table = report.main([str(stem.with_suffix(".json"))])
    assert f"| 2×1×96×80 | {dtype} | NCHW | 2 | 16 |" in table and "× published" in table
    # --sources / --scale override AdAutoMix's settings
    payload = bench_blend_sources.main(["--device", "cpu", "--shapes", "2x3x8x8", "--dtypes", dtype, "--layouts",
                                        "contiguous", "--sources", "4", "--scale", "2", "--providers", "published",
                                        "--reps", "1", "--out", str(stem)])  # fmt: skip
    assert {(r["sources"], r["scale"], r["logits"]) for r in payload["cases"]} == {(4, 2, "4x4")}


@pytest.mark.slow  # a benchmark run end to end
def test_bench_sage_writes_every_figure_and_the_baselines_wall(tmp_path):
    """Tiny cases: the baseline is timed where its predicted peak fits under --paper-max-gb, skipped with its
    need recorded where it does not, and left out of non-float32 and non-square cases; the report shows why."""
    stem = tmp_path / "sage"
    providers = ["reference", *FAST_CPU, "paper"]
    small, large = sage_paper.peak_bytes(3, 3, 8, 2), sage_paper.peak_bytes(3, 3, 12, 5)  # K = 1% of the shifts
    assert small < large
    payload = bench_sage.main(["--device", "cpu", "--shapes", "3x3x8x8", "3x3x12x12", "3x3x8x6", "--dtypes",
                               "float32", "bfloat16", "--providers", *providers, "--reps", "1", "--warmup", "1",
                               "--paper-max-gb", str((small + large) / 2e9), "--out", str(stem)])  # fmt: skip
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").stat().st_size > 0
    assert saved == json.loads(json.dumps(payload))
    for key in (*ENVIRONMENT, "peak_copy_gbps", "byte_model", "reps", "warmup", "lam", "rand_pos", "providers"):
        assert saved[key] is not None, key
    assert saved["bench"] == "sage" and saved["complete"] is True and saved["goals"] == []
    assert saved["case_keys"] == ["shape", "dtype", "layout", "candidates"] and saved["providers"][-1] == "copy"
    rows = saved["cases"]
    timed = {("3x3x8x8", "float32")}
    for r in rows:
        for key in PER_ROW:
            assert r[key] > 0, key
        for key in GPU_ONLY:
            assert r[key] is None, key
        B, C, H, W = map(int, r["shape"].split("x"))
        K = int((2 * H - 1) * (2 * W - 1) * 0.01)
        assert r["candidates"] == K and r["search_pixels"] == B * K * H * W
        item = 4 if r["dtype"] == "float32" else 2
        assert r["bytes"] == 4 * B * C * H * W * item  # grad + 2 x + mixed
        if H == W:
            assert r["paper_peak_gb"] == pytest.approx(sage_paper.peak_bytes(B, C, W, K) / 1e9)
        case = (r["shape"], r["dtype"])
        if case in timed:
            assert r["paper_status"] == "timed" and r["speedup_vs_paper"] > 0
        elif H != W:
            assert r["paper_status"] == "n/a: square images only" and r["paper_peak_gb"] is None
        elif r["dtype"] != "float32":
            assert r["paper_status"].startswith("n/a: float32 only")
        else:
            assert r["paper_status"].startswith(f"skipped: needs {large / 1e9:.3g} GB (")
        assert (r["provider"] == "paper") <= (case in timed)
        assert r["speedup_vs_reference"] > 0
    want = {(s, d, lay) for s in ("3x3x8x8", "3x3x12x12", "3x3x8x6") for d in ("float32", "bfloat16")
            for lay in ("contiguous", "channels_last")}  # fmt: skip
    assert {(r["shape"], r["dtype"], r["layout"]) for r in rows} == want
    assert {r["provider"] for r in rows} == {*providers, "copy"}
    table = report.main([str(stem.with_suffix(".json"))])
    assert "| 3×3×12×12 | float32 | NCHW | 5 | – (skipped: needs" in table and "| K |" in table


def test_region_maps_are_what_the_mixers_hand_the_engine():
    g = torch.Generator().manual_seed(0)
    mixup = bench_blend_regions.region_map("mixup", 3, g)
    assert mixup.shape == (3, 1, 1) and (mixup == BLEND).all()
    cutmix = bench_blend_regions.region_map("cutmix:8", 3, g)
    side = round(8 * (1 - bench_blend_regions.LAM) ** 0.5)
    assert cutmix.shape == (3, 8, 8) and int((cutmix[0] == PARTNER).sum()) == side * side
    assert set(cutmix.unique().tolist()) == {OWN, PARTNER} and (cutmix == cutmix[0]).all()  # one box per batch
    codes = bench_blend_regions.region_map("rmix:16", 4, g)
    assert codes.shape == (4, 16, 16) and codes.dtype == torch.int8
    assert set(codes.unique().tolist()) == {BLEND, OWN, PARTNER}
    for spec in ("mixup", "cutmix:8", "rmix:4"):
        regions = bench_blend_regions.region_map(spec, 4, g)
        # validate=True (the default) checks that the codes, perm and lam are legal
        mixed, _ = rmix_fast.blend_regions(torch.randn(4, 3, 8, 8), perm=torch.tensor([1, 0, 3, 2]), lam=0.3,
                                           regions=regions)  # fmt: skip
        assert mixed.shape == (4, 3, 8, 8)


@pytest.mark.parametrize(
    "script,args,message",
    [
        (bench_rmix, ["--providers", "nonsense"], "unknown provider"),
        (bench_blend_regions, ["--providers", "paper"], "unknown provider"),  # rmix's baseline is not the engine's
        (bench_rmix, ["--shapes", "4x3x16x16", "--grids", "5"], "no case fits"),
        (bench_blend_regions, ["--shapes", "4x3x16x16", "--regions", "rmix:5"], "no case fits"),
        (bench_sage, ["--providers", "compiled"], "unknown provider"),  # no compiled reference for SAGE
        (bench_blend_sources, ["--providers", "paper"], "unknown provider"),  # its baseline is "published"
        (bench_blend_sources, ["--shapes", "2x3x30x30"], "no case fits"),  # scale 4 does not divide 30
    ],
)
def test_op_benchmarks_refuse_bad_providers_and_empty_runs(script, args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        script.main(["--device", "cpu", "--reps", "1", "--out", str(tmp_path / "x"), *args])


@pytest.mark.parametrize(
    "script,args",
    [
        (bench_rmix, ["--shapes", "4x3x16"]),
        (bench_rmix, ["--shapes", "4x3x0x16"]),
        (bench_rmix, ["--grids", "0"]),
        (bench_rmix, ["--dtypes", "int8"]),
        (bench_rmix, ["--layouts", "nhwc"]),
        (bench_rmix, ["--reps", "0"]),
        (bench_blend_regions, ["--regions", "cutmix"]),
        (bench_blend_regions, ["--regions", "rmix:0"]),
        (bench_blend_regions, ["--regions", "mixup:2"]),
        (bench_blend_regions, ["--regions", "box:4"]),
        (bench_blend_regions, ["--threads", "-1"]),
        (bench_sage, ["--rand-pos", "0"]),
        (bench_sage, ["--rand-pos", "1.5"]),
        (bench_sage, ["--warmup", "0"]),
        (bench_blend_sources, ["--sources", "0"]),
        (bench_blend_sources, ["--scale", "-2"]),
    ],
)
def test_op_benchmarks_refuse_bad_cases(script, args, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        script.main(["--device", "cpu", "--out", str(tmp_path / "x"), *args])
    assert info.value.code == 2 and "error" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_op_benchmarks_refuse_cuda_without_a_gpu(tmp_path):
    with pytest.raises(SystemExit, match="cuda"):
        bench_blend_regions.main(["--device", "cuda", "--out", str(tmp_path / "x")])


def test_default_providers_are_the_runnable_backends_the_extras_and_copy_last(monkeypatch):
    names = common.select_providers(bench_rmix.SPEC, CPU, None)
    infos = rmix_fast.available_backends(CPU)
    runnable = [n for n, i in infos.items() if i.available and "interpreter" not in i.reason.lower()]
    assert names == [*runnable, "paper", "compiled", "copy"]
    assert "triton" not in names  # the Triton interpreter is a test tool, timed only when named
    assert common.select_providers(bench_blend_regions.SPEC, CPU, ["copy", "reference", "reference"]) == [
        "reference",
        "copy",
    ]
    unavailable = {**infos, "cpp": rmix_fast.BackendInfo("cpp", False, "not built")}
    monkeypatch.setattr(rmix_fast, "available_backends", lambda device: unavailable)
    with pytest.raises(SystemExit, match="cannot run on cpu: not built"):
        common.select_providers(bench_blend_regions.SPEC, CPU, ["cpp"])
    assert "cpp" not in common.select_providers(bench_blend_regions.SPEC, CPU, None)


def test_rmix_leaves_a_backend_out_of_grids_above_its_max_grid(monkeypatch):
    infos = rmix_fast.available_backends(CPU)
    limited = {**infos, "reference": dataclasses.replace(infos["reference"], max_grid=4)}
    monkeypatch.setattr(rmix_fast, "available_backends", lambda device: limited)
    case = common.Case((2, 1, 8, 8), torch.float32, "contiguous", {"grid": 8})
    assert "reference" not in bench_rmix.setup(case, ["reference", "paper"], CPU).calls
    case = dataclasses.replace(case, params={"grid": 4})
    assert set(bench_rmix.setup(case, ["reference", "paper"], CPU).calls) == {"reference", "paper"}


@pytest.mark.slow
def test_runner_checks_goals_and_keeps_the_cases_of_a_run_cut_short(tmp_path):
    """The runner as a library: a goal that applies to CPU runs is checked on the provider "auto" picks, and
    an op benchmark that fails mid-run leaves a JSON of its finished cases marked incomplete."""
    auto = rmix_fast.ops.resolve_backend("auto", CPU, None)
    goal = common.Goal("any", ">= 0x the reference", {"regions": "mixup"}, "speedup_vs_reference", 0.0, "cpu")
    spec = dataclasses.replace(bench_blend_regions.SPEC, goals=(goal,))
    argv = ["--device", "cpu", "--shapes", "2x1x4x4", "--dtypes", "float32", "--layouts", "contiguous", "--reps", "1"]
    payload = common.run_op_benchmark(spec, [*argv, "--regions", "mixup", "rmix:2", "--out", str(tmp_path / "a")])
    (result,) = payload["goals"]
    assert result["provider"] == auto and result["regions"] == "mixup" and result["met"] is True
    assert "| >= 0x the reference |" in report.main([str(tmp_path / "a.json")])

    def setup_then_fail(case, providers, device):
        if case.params["regions"] != "mixup":
            raise RuntimeError("device lost")
        return bench_blend_regions.setup(case, providers, device)

    spec = dataclasses.replace(bench_blend_regions.SPEC, setup=setup_then_fail)
    with pytest.raises(RuntimeError, match="device lost"):
        common.run_op_benchmark(spec, [*argv, "--regions", "mixup", "rmix:2", "--out", str(tmp_path / "b")])
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["complete"] is False and {r["regions"] for r in saved["cases"]} == {"mixup"}
    assert "Incomplete run" in report.main([str(tmp_path / "b.json")])


# -------------------------------------------------------------------- the step benchmark, the study


@pytest.mark.slow
def test_bench_step_runs_every_method_and_measures_agreement(tmp_path):
    stem = tmp_path / "step"
    bench_step.main(["--device", "cpu", "--cases", "small_cnn:32:4:none:contiguous:10",
                     "small_cnn:32:4:bf16:channels_last:10", "--reps", "1", "--warmup", "1",
                     "--agreement", "small_cnn:32", "--agreement-steps", "3", "--agreement-images", "64", "24",
                     "--rl-steps", "6", "--rl-minibatch", "3", "--out", str(stem)])  # fmt: skip
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").stat().st_size > 0
    for key in ENVIRONMENT:
        assert saved[key] is not None, key
    rows = saved["cases"]
    assert len(rows) == 2 * len(bench_step.METHODS)
    assert {r["method"] for r in rows} == set(bench_step.METHODS) and "rlmix" in bench_step.METHODS
    by = {(r["case"], r["method"]): r for r in rows}
    for r in rows:
        assert r["time_ms"] > 0 and r["images_per_s"] > 0
        if r["method"] == "vanilla":
            assert r["ratio_to_vanilla"] == 1.0
        assert r["ratio_to_rmix_fast"] == pytest.approx(r["time_ms"] / by[r["case"], "rmix_fast"]["time_ms"])
        if r["method"] == "rlmix":  # the update amortised over its rollout; the goal is relative to R-Mix
            assert (r["rl_steps"], r["rl_minibatch"], r["rl_epochs"]) == (6, 3, 10) and r["rl_update_ms"] > 0
            assert r["time_ms"] == pytest.approx(r["rl_step_ms"] + r["rl_update_ms"] / 6)
            assert (r["goal_to"], r["goal_ratio"]) == ("rmix_fast", 1.1)
            assert r["goal_met"] == (r["ratio_to_rmix_fast"] <= 1.1)
        if r["method"] == "rmix_amortised":  # no saliency pass: the goal is close to vanilla
            assert (r["goal_to"], r["goal_ratio"]) == ("vanilla", 1.1)
        if r["method"] == "sage":  # its clean pass is a full backward: the goal is relative to vanilla
            assert (r["goal_to"], r["goal_ratio"]) == ("vanilla", 2.1)
            assert r["goal_met"] == (r["ratio_to_vanilla"] <= 2.1)
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
    assert "× rmix_fast |" in table  # RL-Mix's ratio to R-Mix beside its ratio to vanilla


@pytest.mark.parametrize(
    "text",
    ["resnet50:224", "resnet50:224:128:fp8:channels_last", "resnet50:224:128:bf16:nhwc", "a:b:c:none:contiguous"],
)
def test_step_case_rejects_bad_specs(text):
    with pytest.raises((SystemExit, ValueError)):
        bench_step.parse_args(["--device", "cpu", "--cases", text])


def test_sage_step_keeps_the_clean_gradients_and_weights_both_losses():
    """The step is (0.3 clean + 0.7 mixed) as SAGE's code: replayed by hand from the same draws."""
    case = bench_step.StepCase.parse("small_cnn:16:4:none:contiguous:5")
    runner = bench_step.StepRunner(case, torch.device("cpu"))
    model, opt = runner.model, runner.opt
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = runner.gen.get_state()
    runner.step("sage")
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
    for s in opt.state.values():
        s.clear()
    runner.gen.set_state(state)
    x, y = runner.x, runner.y
    t = soft_targets(y, 5)
    opt.zero_grad(set_to_none=True)
    grad, _ = clean_loss_backward(model, x, t, weight=0.3, loss_fn=runner.loss)
    x_mix, y_soft = runner.sage(x, y, grad)
    (runner.loss(model(x_mix), y_soft) * 0.7).backward()
    opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), after[n], rtol=1e-6, atol=1e-7)


def test_step_refuses_methods_without_vanilla():
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--device", "cpu", "--methods", "cutmix", "rmix_fast"])


def test_step_takes_the_authors_rollout_by_default_and_refuses_a_bad_one():
    args = bench_step.parse_args(["--device", "cpu"])
    assert (args.ppo.n_steps, args.ppo.minibatch, args.ppo.epochs) == (1000, 250, 10) and args.rl_update_reps == 1
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--device", "cpu", "--rl-steps", "4", "--rl-minibatch", "8"])


def test_rlmix_steps_timed_never_update():
    # the update is timed on its own and amortised: a timed step that ran one would count it twice
    case = bench_step.StepCase.parse("small_cnn:16:2:none:contiguous:3")
    runner = bench_step.StepRunner(case, torch.device("cpu"), ppo=bench_step.PPOConfig(n_steps=2, minibatch=1),
                                   rl_steps_timed=5)  # fmt: skip
    for _ in range(5):
        runner.step("rlmix")
    assert runner.rlmix.agent.n_updates == 0 and runner.rlmix.agent.buffer.pos == 5


def test_amortised_steps_timed_mix_from_the_store():
    """The first amortised step runs the pass and stores the batch; the timed ones never run it."""
    case = bench_step.StepCase.parse("small_cnn:16:3:none:contiguous:3")
    runner = bench_step.StepRunner(case, torch.device("cpu"))
    assert runner.amortised.needs_grad_for(runner.indices)
    for _ in range(3):
        runner.step("rmix_amortised")
        assert not runner.amortised.needs_grad_for(runner.indices)
    assert runner.amortised.epoch_stats() == {"amortised_share": 2 / 3}


def test_step_runner_rejects_unknown_method():
    runner = bench_step.StepRunner(bench_step.StepCase.parse("small_cnn:16:2:none:contiguous:3"), torch.device("cpu"))
    with pytest.raises(ValueError, match="method must be one of"):
        runner.step("puzzlemix")


@pytest.mark.slow  # a benchmark run end to end
def test_mask_agreement_study_writes_its_figures(tmp_path):
    stem = tmp_path / "agreement"
    r = mask_agreement.main(["--device", "cpu", "--model", "small_cnn", "--steps", "2", "--train-images", "32",
                             "--test-images", "16", "--out", str(stem)])  # fmt: skip
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert saved["commit"] is not None and saved["command"].startswith("python bench/studies/mask_agreement.py")
    assert saved["agreement"] == r["agreement"] and set(saved["per_grid"]) == {"2", "4"}
    assert all(v["agreement_per_level"][0] == 1.0 for v in saved["per_grid"].values())


@pytest.mark.slow  # a benchmark run end to end
def test_mask_agreement_study_of_amortised_saliency(tmp_path):
    stem = tmp_path / "amortised"
    r = mask_agreement.main(["--device", "cpu", "--model", "small_cnn", "--saliency", "amortised", "--epochs", "2",
                             "--batch", "16", "--train-images", "48", "--test-images", "16", "--eval-images", "24",
                             "--out", str(stem)])  # fmt: skip
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert saved["saliency"] == "amortised" and saved["eval_images"] == 24 and saved["train_steps"] == 6
    for kind in ("agreement", "same_view", "other_image", "regrouped_batch"):
        assert saved[kind] == r[kind] and 0.0 < saved[kind] <= 1.0, kind
        assert all(v[f"{kind}_per_level"][0] == 1.0 for v in saved["per_grid"].values())  # q = 0: all top


# ------------------------------------------------------------------------------------ bench as a whole


@pytest.mark.parametrize("path", sorted((BENCH / "results").glob("*.json")), ids=lambda p: p.name)
def test_every_recorded_result_renders(path):
    run = json.loads(path.read_text())
    table = report.render(run)
    assert run["command"] in table and str(run["commit"])[:7] in table
    if "schema" not in run and "mask_agreement" not in run and "per_grid" not in run:
        assert "before the shared runner" in table  # the old script's files are labelled as such


@pytest.mark.slow  # a benchmark run end to end
@pytest.mark.parametrize(
    "script",
    ["bench_rmix.py", "bench_blend_regions.py", "bench_sage.py", "bench_step.py", "studies/mask_agreement.py",
     "report.py", "gpu_checks.py"],
)  # fmt: skip
def test_every_script_has_help(script):
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr


def test_bench_imports_only_public_api():
    for path in BENCH.rglob("*.py"):
        private = re.findall(r"rmix_fast(?:\.\w+)*\._\w+", path.read_text())
        assert not private, f"{path.relative_to(BENCH)} uses private names {private}"


def test_gpu_session_names_files_that_exist():
    script = (BENCH / "gpu_session.sh").read_text()
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_session.sh")]).returncode == 0
    root = BENCH.parent
    named = re.findall(r"(?:tests|bench)/[\w/]+\.py", script)
    benchmarks = ("bench_rmix", "bench_blend_regions", "bench_sage", "bench_blend_sources", "bench_step", "gpu_checks")
    assert {f"bench/{name}.py" for name in benchmarks} <= set(named)
    for name in named:
        assert (root / name).is_file(), name
    stages = (
        "build",
        "checks",
        "tests",
        "bench_rmix",
        "bench_blend_regions",
        "bench_sage",
        "bench_blend_sources",
        "bench_step",
        "bench_step_adautomix",
    )
    for stage in stages:
        assert f"wants {stage}" in script
    # the two calls: correctness first (the checks before the tests), then the benchmarks; together every stage
    call_1 = re.search(r'1\) default_stages="([^"]+)"', script).group(1).split()
    call_2 = re.search(r'2\) default_stages="([^"]+)"', script).group(1).split()
    assert call_1 == ["build", "checks", "tests"] and set(call_1 + call_2) == set(stages)
    # each call's stage time limits add up to well inside the device tool's 600 s per command
    blocks = dict(re.findall(r"\nif wants (\w+); then\n(.*?)\nfi\n", script, flags=re.S))
    limits = {stage: sum(int(n) for n in re.findall(r"timeout (\d+) ", body)) for stage, body in blocks.items()}
    assert set(limits) == set(stages) and all(limits.values())
    assert sum(limits[s] for s in call_1) <= 540 and sum(limits[s] for s in call_2) <= 540


# ----------------------------------------------------------------------------- the prepared GPU checks


def run_gpu_checks(tmp_path: Path, probes: list[str], *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """bench/gpu_checks.py in its CPU self-test mode (small sizes, Triton interpreted), as a child process."""
    out = tmp_path / "gpu-checks.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(BENCH.parent)}
    cmd = [sys.executable, str(BENCH / "gpu_checks.py"), "--device", "cpu", "--small", "--probes", *probes,
           "--out", str(out), *extra]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=BENCH.parent)
    assert out.is_file(), done.stderr[-3000:]
    return done, json.loads(out.read_text())


def check_gpu_checks_run(done: subprocess.CompletedProcess, run: dict, probes: list[str]) -> None:
    """The JSON's structure, one printed line per probe, every check passed on every CPU backend, the report
    renders it."""
    assert run["bench"] == "gpu_checks" and run["complete"] is True and run["small"] is True
    for key in ("device", "device_name", "torch", "triton", "commit", "command", "date", "backends", "seconds"):
        assert run[key] is not None, key
    assert run["device"] == "cpu" and [p["name"] for p in run["probes"]] == probes
    lines = [line for line in done.stdout.splitlines() if line.startswith("gpu-check ")]
    assert sorted(line.split()[1].rstrip(":") for line in lines) == sorted(probes)
    backends = [n for n, i in rmix_fast.available_backends(CPU).items() if i.available]
    assert "triton" in backends  # interpreted: conftest set TRITON_INTERPRET=1 before rmix_fast was imported
    for probe in run["probes"]:
        name, details = probe["name"], probe["details"]
        assert probe["status"] in ("passed", "failed", "error", "skipped") and probe["summary"], probe
        if name == "sync_free":  # CUDA only
            assert probe["status"] == "skipped" and probe["summary"] == "no cuda"
            continue
        assert details["done"] is True and set(details["backends"]) == set(backends), details.get("error")
        if name != "recompiles":  # the others check per backend (param_views: each kernel against the reference)
            covered = {c["case"].split()[0] for c in details["checks"]}
            assert covered >= set(backends) - {"reference"}, covered
        for c in details["checks"]:
            assert isinstance(c["ok"], bool) and c["case"]
        assert [c for c in details["checks"] if not c["ok"]] == []
        assert probe["status"] == "passed", probe["summary"]
        # under the interpreter only: bfloat16 rounding differs from a GPU's, so bit-exactness is not asked there
        assert all(s["case"].startswith("triton") and "bfloat16" in s["case"] for s in details["skipped"])
    assert done.returncode == 0, done.stderr[-3000:]
    table = report.render(run)
    assert all(f"| {p} |" in table for p in probes)


@pytest.mark.slow  # a benchmark run end to end
def test_gpu_checks_self_test_on_the_cpu(tmp_path):
    """A subset of the probes on every CPU backend (reference, cpp, Triton interpreted), tiny sizes: seconds."""
    probes = ["param_views", "bit_exact", "sync_free"]
    done, run = run_gpu_checks(tmp_path, probes, "--dtypes", "float32", "float16")  # all four: the slow test
    bit_exact = {p["name"]: p for p in run["probes"]}["bit_exact"]["details"]["checks"]
    assert {c["case"].split()[2] for c in bit_exact} == {"float32", "float16"}
    check_gpu_checks_run(done, run, probes)


@pytest.mark.slow
def test_gpu_checks_every_probe_on_the_cpu(tmp_path):
    probes = ["param_views", "bit_exact", "ties", "determinism", "sync_free", "launch_limits", "recompiles"]
    done, run = run_gpu_checks(tmp_path, probes)
    recompiles = {p["name"]: p for p in run["probes"]}["recompiles"]["details"]["checks"]
    assert [c["batches"] for c in recompiles] == [5, 5]  # --small: 5 CutMix batches per layout
    assert all(c["cold_ms"] > 0 and c["warm_median_ms"] > 0 for c in recompiles)
    check_gpu_checks_run(done, run, probes)
