"""Evaluation metrics: top-k accuracy, calibration (ECE), FGSM robustness and CAM weakly-supervised localisation
of a model, and the label evidence of a mixing method.

One module per family (``accuracy``, ``calibration``, ``robustness``, ``localization``), each with the per-batch
count that ``Evaluator`` (``evaluator``) adds up; none imports matplotlib (the plots are in
``rmix_fast.training.plots``). ``label_evidence`` measures a mixer, not a model: how far the labels it assigns
are from the share of each source's object its mixed images show (on data with object masks: ``shapes``).

``Evaluator`` is what a training or evaluation loop feeds batch by batch::

    model.eval()
    ev = Evaluator(model, num_classes=100, fgsm_eps=8 / 255, localize=False)
    for x, y in loader:          # x: pixels in [0, 1]
        ev.update(x, y)
    print(ev.result())           # accuracies, errors and ECE in percent (0-100)

Every quantity is a sum kept in one flat float64 tensor, so a distributed run sums ``ev.state()`` over
ranks (``all_reduce``) and hands the total back with ``ev.merge(total)`` before calling ``result()``.

Models are duck-typed: ``model(x) -> (B, K)`` logits, and for class activation maps also
``model.forward_features(x) -> (B, F, h, w)`` (the last feature map before global average pooling) and
``model.classifier`` (an ``nn.Linear(F, K)``), with ``logits = classifier(features.mean((2, 3)))``.

Boxes are integer ``[y0, y1, x0, x1)`` in pixels, half-open: rows ``y0 .. y1 - 1`` and columns ``x0 .. x1 - 1``.
"""

from rmix_fast.training.metrics.accuracy import topk_hits
from rmix_fast.training.metrics.calibration import (
    N_BINS,
    CalibrationBins,
    add_to_bins,
    bin_edges,
    expected_calibration_error,
)
from rmix_fast.training.metrics.evaluator import Evaluator
from rmix_fast.training.metrics.label_evidence import (
    HIDDEN_VISIBILITY,
    box_masks,
    evidence_terms,
    label_evidence,
    mix_evidence_terms,
    own_weight_map,
)
from rmix_fast.training.metrics.localization import (
    CAM_THRESHOLD,
    CONSTANT_RTOL,
    IOU_HIT,
    box_iou,
    cam_boxes,
    class_activation_maps,
    connected_components,
    localization_hits,
)
from rmix_fast.training.metrics.robustness import fgsm, fgsm_errors

__all__ = [
    "CAM_THRESHOLD",
    "CONSTANT_RTOL",
    "HIDDEN_VISIBILITY",
    "IOU_HIT",
    "N_BINS",
    "CalibrationBins",
    "Evaluator",
    "add_to_bins",
    "bin_edges",
    "box_iou",
    "box_masks",
    "cam_boxes",
    "class_activation_maps",
    "connected_components",
    "evidence_terms",
    "expected_calibration_error",
    "fgsm",
    "fgsm_errors",
    "label_evidence",
    "localization_hits",
    "mix_evidence_terms",
    "own_weight_map",
    "topk_hits",
]
