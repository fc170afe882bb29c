"""The training application: ``rmix-train``, ``rmix-eval`` and the demo, with their trainer, options,
method registry, datasets, models, metrics, plots and checkpoints. It uses the library (``rmix_fast``);
nothing in the library imports it. Its command lines are its contract; its Python is not API."""
