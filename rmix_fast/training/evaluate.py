"""rmix-eval: evaluate an rmix-train checkpoint on its dataset's test split.

    rmix-eval --checkpoint runs/shapes-rmix          # the folder, or the checkpoint.pt file itself

Reports top-1 / top-5 accuracy, expected calibration error (15 equal-width bins), FGSM error under an
8/255 l-inf attack on the pixel scale, and for datasets with object boxes (shapes) weakly supervised
localisation accuracy from class activation maps (IoU >= 0.5). Writes ``eval.json`` and
``reliability.png`` to ``--out`` (default: the checkpoint's folder). The evaluation is rmix-train's own
(``rmix_fast.training.evaluation``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rmix_fast.training.checkpoint import atomic_write_json, load_run
from rmix_fast.training.data import build_dataset
from rmix_fast.training.evaluation import evaluate_model, print_results, write_plots
from rmix_fast.training.models import PixelClassifier, build_model
from rmix_fast.training.run_dir import CHECKPOINT, RELIABILITY
from rmix_fast.training.runtime import AMP_MODES, default_device

__all__ = ["main"]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rmix-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="an rmix-train output folder or its checkpoint.pt")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the one the run used)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=100, help="evaluation batch size")
    p.add_argument("--fgsm-eps", type=float, default=8.0, help="FGSM radius in pixel levels out of 255 (0: skip)")
    p.add_argument("--amp", choices=AMP_MODES, default="none", help="autocast dtype")
    p.add_argument("--out", default=None, help="folder for eval.json and reliability.png")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.fgsm_eps < 0:
        p.error(f"--fgsm-eps must be >= 0, got {args.fgsm_eps}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    path, state = load_run(args.checkpoint, "rmix-eval", CHECKPOINT)
    cfg = state["config"]
    device = default_device(args.device)
    dataset = build_dataset(
        cfg["dataset"],
        "test",
        data_dir=args.data_dir or cfg.get("data_dir"),
        image_size=cfg.get("image_size"),
        size=cfg.get("test_size"),
        seed=cfg["seed"],
    )
    net = build_model(cfg["model"], dataset.num_classes, in_channels=dataset.channels)
    model = PixelClassifier(net, dataset.mean, dataset.std)
    model.load_state_dict(state["model"])
    model.to(device)
    result = evaluate_model(
        model,
        dataset,
        device=device,
        batch_size=args.batch_size,
        amp=args.amp,
        fgsm_eps=args.fgsm_eps / 255 if args.fgsm_eps > 0 else None,
        localize=getattr(dataset, "boxes", None) is not None,
    )
    out = Path(args.out) if args.out else path.parent
    atomic_write_json(
        out / "eval.json", {"checkpoint": str(path), "epoch": state["epoch"] + 1, "config": cfg, "result": result}
    )
    write_plots(out, result, None)
    print_results(result, title=f"{cfg['method']} / {cfg['model']} / {cfg['dataset']} (epoch {state['epoch'] + 1})")
    print(f"wrote {out / 'eval.json'} and {out / RELIABILITY}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
