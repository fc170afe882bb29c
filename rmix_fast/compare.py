"""``python -m rmix_fast.compare``: the ``rmix-compare`` command of the training application,
``rmix_fast.training.compare`` (methods x seeds as rmix-train runs, a table and plots). Not imported by the
library."""

from rmix_fast.training.compare import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
