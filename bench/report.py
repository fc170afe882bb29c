"""Markdown tables of recorded runs, for bench/README.md: one table per op benchmark run (``bench_rmix.py``,
``bench_blend_regions.py``, ``bench_sage.py``) with its goals, the step table with the half-resolution mask agreement
(``bench_step.py``), a mask-agreement study's file (``studies/mask_agreement.py --out``, half resolution or
amortised saliency), and the probes of ``gpu_checks.py`` with their failed checks.

    python bench/report.py bench/results/rmix-<device>-<date>.json bench/results/blend_regions-<...>.json \\
        bench/results/step-<device>-<date>.json

Files written by ``bench_rmix.py`` before the shared runner (no ``schema`` field) render too, labelled as
such; figures they did not record show as "–".
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

# Providers shown as "fast": their own columns of % copy and speed-ups. The others get a time column only.
FAST = ("triton", "cpp")
HEADERS = {"grid": "p", "candidates": "K"}
# What a file without these fields was: bench_rmix.py before the shared runner.
OLD_RMIX = {"bench": "rmix", "case_keys": ["shape", "dtype", "layout", "grid"], "speedup_over": ["paper", "reference"]}


def _header(run: dict[str, Any]) -> str:
    dirty = " (uncommitted changes)" if run.get("dirty_tree") else ""
    text = (
        f"`{run['command']}` at commit `{str(run['commit'])[:7]}`{dirty}, {run['date'][:10]}, {run['device_name']}, "
        f"torch {run['torch']}, triton {run['triton']}, CUDA {run['cuda']}, Python {run['python']}; "
        f"allocator: {run.get('allocator', 'default')}."
    )
    if "schema" not in run and "mask_agreement" not in run and "per_grid" not in run:
        text += " Recorded by `bench_rmix.py` before the shared runner (`bench/common.py`)."
    if run.get("complete") is False:
        text += f" **Incomplete run**: it stopped after {len(run['cases'])} rows."
    return text


def _fmt(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{suffix}"


def _case_cell(key: str, value: object) -> str:
    if key == "shape":
        return str(value).replace("x", "×")
    if key == "layout":
        return "NCHW" if value == "contiguous" else str(value)
    return str(value)


def _time_cell(rows: dict[str, dict], provider: str, spec: str) -> str:
    """A provider's time in a case; where it has no row, why, if the case says (``<provider>_status``, e.g.
    bench_sage's "skipped: needs 28.9 GB" for the published loop): its memory wall instead of a time."""
    if provider in rows:
        return _fmt(rows[provider]["time_ms"], spec)
    status = next((r.get(f"{provider}_status") for r in rows.values() if r.get(f"{provider}_status")), None)
    return f"– ({status.split(' (')[0]})" if status and status != "timed" else "–"


def op_table(run: dict[str, Any]) -> str:
    """Per case: the time of every provider, then for each fast provider its % of the same-size copy and
    its speed-ups, and on a GPU its CUDA-graph time."""
    run = {**OLD_RMIX, **run} if "schema" not in run else run
    keys, bases = run["case_keys"], run["speedup_over"]
    gpu = run["device"] == "cuda"
    by_case: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in run["cases"]:
        by_case[tuple(r[k] for k in keys)][r["provider"]] = r
    providers = list(dict.fromkeys(r["provider"] for r in run["cases"]))
    fast = [p for p in FAST if p in providers]
    # The old rmix files always had the paper / reference / compiled columns; new ones show what they timed.
    slow = ["paper", "reference", "compiled"] if "schema" not in run else [*bases, *providers]
    slow = [p for p in dict.fromkeys(slow) if p not in fast and p != "copy"]
    bases = [b for b in bases if b in providers]
    cols = [HEADERS.get(k, k) for k in keys] + [f"{p} ms" for p in slow + fast] + ["copy ms"]
    for p in fast:
        cols += [f"{p} % copy"] + [f"{p} × {b}" for b in bases]
    if gpu:
        cols += [f"{p} graph µs (% copy)" for p in fast]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for case, v in by_case.items():
        cells = [_case_cell(k, c) for k, c in zip(keys, case, strict=True)]
        cells += [_time_cell(v, p, ".2f") for p in slow]
        cells += [_time_cell(v, p, ".3f") for p in fast]
        cells.append(_fmt(v["copy"]["time_ms"], ".3f"))
        for p in fast:
            r = v.get(p) or {}
            cells.append(_fmt(r.get("pct_copy"), ".0f", " %"))
            for i, b in enumerate(bases):
                speedup = _fmt(r.get(f"speedup_vs_{b}"), ".1f", "×")
                cells.append(f"**{speedup}**" if i == 0 else speedup)  # the first base is the one that matters
        if gpu:
            for p in fast:
                r = v.get(p) or {}
                graph_us = r.get("graph_ms") and 1e3 * r["graph_ms"]
                cells.append(f"{_fmt(graph_us, '.0f')} ({_fmt(r.get('graph_pct_copy'), '.0f', ' %')})")
        lines.append("| " + " | ".join(cells) + " |")
    out = [_header(run), "", "\n".join(lines)]
    if run.get("goals"):
        out += ["", "| goal | case | provider | value | met |", "|---|---|---|---|---|"]
        for g in run["goals"]:
            case = g.get("case") or f"{g['shape']}, {g['dtype']}, {g['layout']}, p={g['grid']}"
            out.append(f"| {g['what']} | {case} | {g['provider']} | {_fmt(g['value'], '.1f')} | "
                       f"{'yes' if g['met'] else '**no**'} |")  # fmt: skip
    return "\n".join(out)


def _step_cell(row: dict[str, Any]) -> str:
    """A method's time and ratio to vanilla; and its ratio to the method its goal is relative to, when that is
    not vanilla (RL-Mix's to R-Mix)."""
    cell = f"{row['time_ms']:.1f} ms (**{row['ratio_to_vanilla']:.2f}×**)"
    base = row.get("goal_to")
    if base not in (None, "vanilla") and row.get(f"ratio_to_{base}") is not None:
        cell += f", {row[f'ratio_to_{base}']:.2f}× {base}"
    return cell


def step_table(run: dict[str, Any]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in run["cases"]))
    by_case: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in run["cases"]:
        by_case[r["case"]][r["method"]] = r
    lines = ["| case | vanilla ms | " + " | ".join(m for m in methods if m != "vanilla") + " |",
             "|" + "---|" * (len(methods) + 1)]  # fmt: skip
    for case, v in by_case.items():
        cells = [case, f"{v['vanilla']['time_ms']:.1f}"]
        cells += [_step_cell(v[m]) for m in methods if m != "vanilla"]
        lines.append("| " + " | ".join(cells) + " |")
    out = [_header(run), "", "\n".join(lines)]
    for a in run.get("mask_agreement", []):
        out += ["", agreement_text(a)]
    return "\n".join(out)


def agreement_text(a: dict[str, Any]) -> str:
    """A mask-agreement study (``studies/mask_agreement.py``): its sentence and its table per grid and level, for
    the half-resolution pass or for amortised saliency (``"saliency": "amortised"``)."""
    if a.get("saliency") == "amortised":
        text = (f"Amortised saliency, {a['model']} at {a['image_size']}² trained {a['train_epochs']} epochs "
                f"({a['train_steps']} steps) with amortised R-Mix on {a['train_images']} shapes images (test accuracy "
                f"{a['test_accuracy']:.1f} %), its first {a['eval_images']} training images: the stored map's mask "
                f"against the fresh full-resolution mask of a new augmented view: **{100 * a['agreement']:.1f} %** of "
                f"cells identical (of the view it was stored from: {100 * a['same_view']:.1f} %; another image's "
                f"stored map: {100 * a['other_image']:.1f} %; the fresh mask with the batch regrouped: "
                f"{100 * a['regrouped_batch']:.1f} %).")  # fmt: skip
        rows = (("agreement", " (stored)"), ("same_view", " (stored, same view)"),
                ("other_image", " (other image)"), ("regrouped_batch", " (fresh, regrouped)"))  # fmt: skip
    else:
        text = (f"Half-resolution mask agreement, {a['model']} at {a['image_size']}² trained {a['train_steps']} "
                f"steps on shapes (test accuracy {a['test_accuracy']:.1f} %), {a['test_images']} held-out images: "
                f"**{100 * a['agreement']:.1f} %** of cells identical (a different image's mask at the same q: "
                f"{100 * a['other_image']:.1f} %; the full-resolution mask with the batch regrouped: "
                f"{100 * a['regrouped_batch']:.1f} %).")  # fmt: skip
        rows = (("agreement", ""), ("other_image", " (other image)"), ("regrouped_batch", " (full, regrouped)"))
    out = [text, "", "| p | " + " | ".join(f"q={q:g}" for q in a["levels"]) + " | mean |",
           "|" + "---|" * (len(a["levels"]) + 2)]  # fmt: skip
    for p, v in a["per_grid"].items():
        for kind, label in rows:
            levels = " | ".join(f"{100 * x:.0f} %" for x in v[f"{kind}_per_level"])
            out.append(f"| {p}{label} | {levels} | {100 * v[kind]:.1f} % |")
    return "\n".join(out)


def _check_details(check: dict[str, Any]) -> str:
    """A failed check in a few words: per output, the elements that differ and by how much; or its error."""
    parts = []
    for key, value in check.items():
        if key in ("case", "ok"):
            continue
        if isinstance(value, dict) and value.get("bit_equal") is False:
            diff = f", max {value['max_abs_diff']:.3g}" if "max_abs_diff" in value else ""
            parts.append(f"{key}: {value.get('n_diff', '?')} differ{diff}")
        elif isinstance(value, dict) and "error" in value:
            parts.append(f"{key}: {value['error']}")
        elif key in ("error", "synced", "cells_not_top", "batches_after_the_first_that_compiled") and value:
            parts.append(f"{key}: {json.dumps(value)[:300]}")
    return "; ".join(parts) or "see the JSON"


def checks_table(run: dict[str, Any]) -> str:
    """``gpu_checks.py``: one row per probe (status, seconds, summary), then the failed checks."""
    lines = ["| probe | status | s | summary |", "|---|---|---|---|"]
    failed = []
    for probe in run["probes"]:
        status = probe["status"] if probe["status"] in ("passed", "skipped") else f"**{probe['status']}**"
        summary = probe["summary"].replace("|", "/")
        lines.append(f"| {probe['name']} | {status} | {probe['seconds']:.1f} | {summary} |")
        failed += [(probe["name"], c) for c in probe["details"].get("checks", []) if not c["ok"]]
    small = " Small sizes (`--small`): a self-test of the probes, not a GPU result." if run.get("small") else ""
    out = [_header(run) + small, "", "\n".join(lines)]
    if failed:
        out += ["", "Failed checks:", ""]
        out += [f"- {name}: {c['case']}: {_check_details(c)}" for name, c in failed[:40]]
        if len(failed) > 40:
            out.append(f"- ... and {len(failed) - 40} more (the JSON has them all)")
    return "\n".join(out)


def render(run: dict[str, Any]) -> str:
    if run.get("bench") == "gpu_checks":
        return checks_table(run)
    if "per_grid" in run:  # a mask-agreement study's own file
        return _header(run) + "\n\n" + agreement_text(run)
    return step_table(run) if "mask_agreement" in run else op_table(run)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = "JSON files of bench_rmix.py / bench_blend_regions.py / bench_sage.py / bench_step.py / gpu_checks.py"
    ap.add_argument("results", nargs="+", type=Path, help=what)
    args = ap.parse_args(argv)
    text = "\n\n".join(render(json.loads(path.read_text())) for path in args.results)
    print(text)
    return text


if __name__ == "__main__":
    main()
