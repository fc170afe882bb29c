"""The paper-style baseline of ``bench_rmix.py`` and ``bench_step.py``: R-Mix's mixing one PyTorch op per
formula of the paper, and the paper's ``loss.backward()`` saliency pass. It lives in the training application
(``rmix_fast.training.paper_rmix``) because the demo measures against it too."""

from rmix_fast.training.paper_rmix import paper_input_gradient, paper_rmix

__all__ = ["paper_input_gradient", "paper_rmix"]
