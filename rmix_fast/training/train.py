"""rmix-train: train an image classifier with any registered mixing method, under the paper's protocol.

    rmix-train --dataset shapes --method rmix --epochs 10 --out runs/shapes-rmix
    rmix-train --dataset cifar100 --data-dir ~/data --model preactresnet18 --method rmix --out runs/c100
    torchrun --nproc-per-node 8 -m rmix_fast.train --dataset imagefolder --data-dir /imagenet ...

Defaults are the paper's CIFAR recipe (SGD, momentum 0.9, Nesterov, weight decay 1e-4, batch 100, 300
epochs, OneCycleLR with max LR 0.3 stepped per batch, random crop + flip, R-Mix alpha 1, grids {2, 4}, 10
levels). ``--resume`` continues from the last checkpoint and ends with the same numbers as an
uninterrupted run (on the CPU, bit for bit). Options: ``options.py``; methods: ``methods.py``; the loop:
``trainer.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from rmix_fast.training.distributed import exit_worker, in_torchrun_job
from rmix_fast.training.options import parse_args
from rmix_fast.training.trainer import Trainer

__all__ = ["cli", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    trainer = Trainer(args)
    try:
        if args.resume:
            trainer.resume()
        else:
            trainer.start_fresh()
        trainer.fit()
    finally:
        trainer.env.shutdown()
    return 0


def cli() -> None:
    """The ``rmix-train`` command: ``main()``, then an exit that a ``torchrun`` worker survives."""
    code = main()
    if in_torchrun_job():
        exit_worker(code)
    raise SystemExit(code)


if __name__ == "__main__":
    cli()
