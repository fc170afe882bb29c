"""``python -m rmix_fast.demo``: the demo of the training application, ``rmix_fast.training.demo``. Not
imported by the library."""

from rmix_fast.training.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
