"""Markdown summary of recorded runs, for bench/README.md: the op table with its goals, the step table with
the half-resolution mask agreement.

    python bench/report.py bench/results/rmix-<device>-<date>.json bench/results/step-<device>-<date>.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def _header(run: dict) -> str:
    dirty = " (uncommitted changes)" if run.get("dirty_tree") else ""
    return (
        f"`{run['command']}` at commit `{str(run['commit'])[:7]}`{dirty}, {run['date'][:10]}, {run['device_name']}, "
        f"torch {run['torch']}, triton {run['triton']}, CUDA {run['cuda']}, Python {run['python']}; "
        f"allocator: {run.get('allocator', 'default')}."
    )


def _fmt(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{suffix}"


def rmix_table(run: dict) -> str:
    gpu = run["device"] == "cuda"
    by_case: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in run["cases"]:
        by_case[(r["shape"], r["dtype"], r["layout"], r["grid"])][r["provider"]] = r
    fast = [p for p in ("triton", "cpp") if any(p in v for v in by_case.values())]
    cols = ["shape", "dtype", "layout", "p", "paper ms", "reference ms", "compiled ms"]
    cols += [f"{p} ms" for p in fast] + ["copy ms"]
    for p in fast:
        cols += [f"{p} % copy", f"{p} × paper", f"{p} × reference"]
    if gpu:
        cols += [f"{p} graph µs (% copy)" for p in fast]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for (shape, dtype, layout, grid), v in by_case.items():
        cells = [shape.replace("x", "×"), dtype, "NCHW" if layout == "contiguous" else "channels_last", str(grid)]
        cells += [_fmt(v[p]["time_ms"] if p in v else None) for p in ("paper", "reference", "compiled")]
        cells += [_fmt(v[p]["time_ms"] if p in v else None, ".3f") for p in fast]
        cells.append(_fmt(v["copy"]["time_ms"], ".3f"))
        for p in fast:
            r = v.get(p)
            speedup = "**" + _fmt(r and r["speedup_vs_paper"], ".1f", "×") + "**"
            cells += [
                _fmt(r and r["pct_copy"], ".0f", " %"),
                speedup,
                _fmt(r and r["speedup_vs_reference"], ".1f", "×"),
            ]
        if gpu:
            for p in fast:
                r = v.get(p)
                cells.append(f"{_fmt(r and r['graph_ms'] and 1e3 * r['graph_ms'], '.0f')} "
                             f"({_fmt(r and r['graph_pct_copy'], '.0f', ' %')})")  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    out = [_header(run), "", "\n".join(lines)]
    if run.get("goals"):
        out += ["", "| goal | layout | p | provider | value | met |", "|---|---|---|---|---|---|"]
        out += [f"| {g['what']} ({g['shape']}, {g['dtype']}) | {g['layout']} | {g['grid']} | {g['provider']} | "
                f"{_fmt(g['value'], '.1f')} | {'yes' if g['met'] else '**no**'} |" for g in run["goals"]]  # fmt: skip
    return "\n".join(out)


def step_table(run: dict) -> str:
    methods = list(dict.fromkeys(r["method"] for r in run["cases"]))
    by_case: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in run["cases"]:
        by_case[r["case"]][r["method"]] = r
    lines = ["| case | vanilla ms | " + " | ".join(m for m in methods if m != "vanilla") + " |",
             "|" + "---|" * (len(methods) + 1)]  # fmt: skip
    for case, v in by_case.items():
        cells = [case, f"{v['vanilla']['time_ms']:.1f}"]
        cells += [f"{v[m]['time_ms']:.1f} ms (**{v[m]['ratio_to_vanilla']:.2f}×**)" for m in methods if m != "vanilla"]
        lines.append("| " + " | ".join(cells) + " |")
    out = [_header(run), "", "\n".join(lines)]
    for a in run.get("mask_agreement", []):
        out += ["", f"Half-resolution mask agreement, {a['model']} at {a['image_size']}² trained {a['train_steps']} "
                f"steps on shapes (test accuracy {a['test_accuracy']:.1f} %), {a['test_images']} held-out images: "
                f"**{100 * a['agreement']:.1f} %** of cells identical (a different image's mask at the same q: "
                f"{100 * a['other_image']:.1f} %; the full-resolution mask with the batch regrouped: "
                f"{100 * a['regrouped_batch']:.1f} %).", "",
                "| p | " + " | ".join(f"q={q:g}" for q in a["levels"]) + " | mean |",
                "|" + "---|" * (len(a["levels"]) + 2)]  # fmt: skip
        rows = (("agreement", ""), ("other_image", " (other image)"), ("regrouped_batch", " (full, regrouped)"))
        for p, v in a["per_grid"].items():
            for kind, label in rows:
                levels = " | ".join(f"{100 * x:.0f} %" for x in v[f"{kind}_per_level"])
                out.append(f"| {p}{label} | {levels} | {100 * v[kind]:.1f} % |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="JSON files written by bench_rmix.py / bench_step.py")
    args = ap.parse_args(argv)
    parts = []
    for path in args.results:
        run = json.loads(path.read_text())
        is_step = "mask_agreement" in run
        parts.append(step_table(run) if is_step else rmix_table(run))
    text = "\n\n".join(parts)
    print(text)
    return text


if __name__ == "__main__":
    main()
