"""``python -m rmix_fast.train`` (and ``torchrun -m rmix_fast.train``): the ``rmix-train`` command of the
training application, ``rmix_fast.training.train``. Not imported by the library."""

from rmix_fast.training.train import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
