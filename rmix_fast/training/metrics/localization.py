"""Weakly-supervised localisation with class activation maps (CAM, Zhou et al. 2016).

The model's CAM of a class is thresholded at a fraction of its maximum, the largest 4-connected region gives
the predicted box, and a sample counts as localised when that box's IoU with a ground-truth box is >= 0.5.

Boxes are integer ``[y0, y1, x0, x1)`` in pixels, half-open: rows ``y0 .. y1 - 1`` and columns ``x0 .. x1 - 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmix_fast.saliency import unwrap_model

__all__ = [
    "CAM_THRESHOLD",
    "CONSTANT_RTOL",
    "IOU_HIT",
    "box_iou",
    "cam_boxes",
    "class_activation_maps",
    "connected_components",
    "localization_hits",
]

CAM_THRESHOLD = 0.2  # Zhou et al. 2016: keep the CAM above 20 % of its max
IOU_HIT = 0.5  # a localisation counts when IoU >= 0.5
CONSTANT_RTOL = 1e-5  # a CAM whose range is below this fraction of its magnitude counts as constant


def class_activation_maps(model: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
    """Class activation maps (Zhou et al. 2016) of one class per sample.

    ``CAM_b = sum_f W[classes[b], f] * features[b, f]`` (the classifier bias shifts the map by a constant and is
    left out), upsampled bilinearly to the input size, then min-max normalised per sample to [0, 1]; a constant
    map (range below ``CONSTANT_RTOL`` times its largest magnitude, or exactly 0) gives zeros.

    Args:
        model: has ``forward_features(x) -> (B, F, h, w)`` and ``classifier`` (``nn.Linear(F, K)``).
        x: (B, C, H, W) model input.
        classes: (B,) int64, the class whose map each sample gets.

    Returns:
        (B, H, W) float32 maps in [0, 1], detached.
    """
    model = unwrap_model(model)
    with torch.no_grad():
        features = model.forward_features(x)
        # float32 from here: under autocast einsum would run in half precision.
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = model.classifier.weight.float()[classes]  # (B, F)
            cam = torch.einsum("bf,bfhw->bhw", weight, features.float())
            cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            lo = cam.amin(dim=(1, 2), keepdim=True)
            span = cam.amax(dim=(1, 2), keepdim=True) - lo
            # "Constant" up to rounding: the weighted sum of a constant map differs in the last bits from one
            # position to the next (vectorised reductions), and min-max would blow that noise up to [0, 1].
            flat = span <= CONSTANT_RTOL * cam.abs().amax(dim=(1, 2), keepdim=True)
            return torch.where(flat, 0.0, (cam - lo) / torch.where(flat, 1.0, span))


def _compress(parent: Tensor) -> Tensor:
    """Pointer jumping until every node points at its root (depth halves each pass: log-many passes)."""
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            return parent
        parent = grand


def connected_components(mask: Tensor) -> Tensor:
    """4-connected components of a (B, H, W) bool mask, all samples at once on the mask's device.

    Returns (B, H, W) int64 labels: each foreground pixel gets the flat index (into the B*H*W batch) of the
    first pixel, in raster order, of its component; background pixels get B*H*W.

    Why this algorithm: a union-find run as whole-tensor ops (hook, then compress, in the style of
    Shiloach-Vishkin), so it is GPU-friendly and has no Python loop over pixels, and it needs a few rounds
    rather than one round per pixel of a component's extent (plain min-label propagation took ~250 rounds on
    224 x 224 CAM blobs). Every pixel starts as its own root. Each round, every foreground edge whose ends have
    different roots hooks the larger root onto the smaller (``scatter_reduce`` amin resolves several hooks on
    one root), then pointer jumping flattens the trees. A parent is always a smaller index of the same
    component, so there are no cycles, each component's root ends as its smallest (first raster) pixel, and
    every round with an unmerged edge merges trees, so the loop ends.
    """
    b, h, w = mask.shape
    n = b * h * w
    idx = torch.arange(n, device=mask.device).view(b, h, w)
    # Edges between foreground 4-neighbours (rows never wrap between images: the shifts stay in each image).
    right = mask[:, :, :-1] & mask[:, :, 1:]
    down = mask[:, :-1, :] & mask[:, 1:, :]
    src = torch.cat([idx[:, :, :-1][right], idx[:, :-1, :][down]])
    dst = torch.cat([idx[:, :, 1:][right], idx[:, 1:, :][down]])
    parent = idx.reshape(-1).clone()
    while src.numel() > 0:
        rs, rd = parent[src], parent[dst]
        open_ = rs != rd
        if not bool(open_.any()):
            break
        rs, rd = rs[open_], rd[open_]
        parent.scatter_reduce_(0, torch.maximum(rs, rd), torch.minimum(rs, rd), reduce="amin")
        parent = _compress(parent)
        src, dst = src[open_], dst[open_]  # edges already inside one tree stay so: drop them
    return torch.where(mask, parent.view(b, h, w), n)


def cam_boxes(cams: Tensor, threshold: float = CAM_THRESHOLD) -> Tensor:
    """Bounding box of the largest 4-connected region where ``cam >= threshold * max(cam)``, per sample.

    Args:
        cams: (B, H, W) non-negative maps (e.g. from ``class_activation_maps``).
        threshold: fraction of each map's maximum (0.2 as in the CAM paper).

    Returns:
        (B, 4) int64 ``[y0, y1, x0, x1)``. Ties between equally large regions go to the one whose first pixel
        comes first in raster order. A map whose max is <= 0 (e.g. all zero) gives the whole image.
    """
    if cams.dim() != 3:
        raise ValueError(f"cams must be (B, H, W), got {tuple(cams.shape)}")
    b, h, w = cams.shape
    cams = cams.detach().float()
    peak = cams.amax(dim=(1, 2), keepdim=True)
    mask = (cams >= threshold * peak) | (peak <= 0)
    lab = connected_components(mask)
    n = b * h * w
    sizes = torch.bincount(lab.view(-1), minlength=n + 1)[:n].view(b, h * w)
    root = sizes.argmax(dim=1) + torch.arange(b, device=cams.device) * (h * w)  # first largest on ties
    keep = lab == root.view(b, 1, 1)
    rows = keep.any(dim=2).to(torch.uint8)  # (B, H)
    cols = keep.any(dim=1).to(torch.uint8)  # (B, W)
    # argmax returns the first maximal index: the first row/column that holds the region.
    y0, y1 = rows.argmax(dim=1), h - rows.flip(1).argmax(dim=1)
    x0, x1 = cols.argmax(dim=1), w - cols.flip(1).argmax(dim=1)
    return torch.stack([y0, y1, x0, x1], dim=1).to(torch.int64)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching rows of two (N, 4) ``[y0, y1, x0, x1)`` box sets -> (N,) float64.

    Area is ``(y1 - y0) * (x1 - x0)`` (negative extents count as 0). Disjoint boxes give 0, and so do two
    empty boxes (no union). Broadcasts over leading dimensions, e.g. (N, 1, 4) against (N, M, 4).
    """
    a, b = a.to(torch.float64), b.to(torch.float64)
    ih = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    iw = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 2], b[..., 2])).clamp(min=0)
    inter = ih * iw

    def area(t: Tensor) -> Tensor:
        return (t[..., 1] - t[..., 0]).clamp(min=0) * (t[..., 3] - t[..., 2]).clamp(min=0)

    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, 1.0), 0.0)


def _best_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """(B,) IoU of each predicted (B, 4) box with its gt box (B, 4), or the best of its gt boxes (B, M, 4)."""
    if gt.dim() == 2:
        return box_iou(pred, gt)
    if gt.dim() == 3:
        # Padding rows (empty boxes) have IoU 0 and never win.
        return box_iou(pred[:, None], gt).amax(dim=1)
    raise ValueError(f"boxes must be (B, 4) or (B, M, 4), got {tuple(gt.shape)}")


def localization_hits(
    model: nn.Module, x: Tensor, labels: Tensor, boxes: Tensor, pred: Tensor, threshold: float = CAM_THRESHOLD
) -> tuple[Tensor, Tensor]:
    """CAM localisation hits on one batch, as 0-dim int64 tensors on ``x``'s device ``(gt_known, top1)``.

    Args:
        model: the CAM interface (``forward_features``, ``classifier``).
        x: (B, C, H, W) input; boxes are in its pixel coordinates.
        labels: (B,) true classes.
        boxes: (B, 4) ground-truth ``[y0, y1, x0, x1)`` boxes, or (B, M, 4) with several per image (padded
            with empty boxes such as all zeros); the best-matching one counts.
        pred: (B,) top-1 predicted classes (e.g. from ``topk_hits``).
        threshold: CAM threshold as a fraction of the max.

    Returns:
        ``gt_known``: how many samples have IoU >= ``IOU_HIT`` between the true class's CAM box and the gt box;
        ``top1``: how many of those also have ``pred == labels``.
    """
    cams = class_activation_maps(model, x, labels)
    hit = _best_iou(cam_boxes(cams, threshold), boxes.to(x.device)) >= IOU_HIT
    # When the prediction is right, the predicted class's CAM is the true class's CAM: one map serves both.
    return hit.sum(), (hit & (pred == labels)).sum()
