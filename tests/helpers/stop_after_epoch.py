"""rmix-train whose every process ends right after the checkpoint of epoch N is written, before that
epoch's ``metrics.json`` (the moment a kill leaves a run at its worst):

    torchrun --nproc_per_node=2 -m tests.helpers.stop_after_epoch N <rmix-train options>

A deterministic stand-in for a SIGKILL under torchrun, where killing the launcher at the right moment races
the workers (a tiny epoch lasts well under a second) and orphans them. The run is then continued with plain
``rmix-train --resume``: nothing of this module is in the run's config.
"""

from __future__ import annotations

import sys

from rmix_fast.training.distributed import exit_worker
from rmix_fast.training.train import cli
from rmix_fast.training.trainer import Trainer


def stop_after(epochs: int) -> None:
    """Makes ``Trainer.save`` end the process once the checkpoint of epoch ``epochs`` (1-based) is written."""
    save = Trainer.save

    def save_then_stop(self: Trainer, epoch: int) -> None:
        save(self, epoch)
        if epoch + 1 == epochs:
            self.env.barrier()  # rank 0 has written the checkpoint before any process goes
            self.env.shutdown()
            exit_worker(0)

    Trainer.save = save_then_stop  # type: ignore[method-assign]


if __name__ == "__main__":
    stop_after(int(sys.argv.pop(1)))
    cli()
