"""Label evidence of a mixed batch: does the label a mixer assigns follow what the mixed image shows?

A mixer labels ``mixed[b]`` ``lam_eff[b]`` of its own class and ``1 - lam_eff[b]`` of its partner's, in
proportion to *area*. On data whose objects are small (``shapes``: one object on ~11 % of the image) area is
not evidence: a CutMix box over the background leaves the object whole yet takes label weight away from it,
and a box over the object hides it yet leaves it most of the label. With each image's object mask the
evidence can be measured.

Definition (per mixed sample ``b``, partner ``a = perm[b]``, object masks ``m`` (H, W)):

* ``w_own(p)`` in [0, 1]: the weight of ``x[b]`` in pixel ``p`` of ``mixed[b]``, from the mixer's region map
  (``MixParams.region_map()``, codes ``BLEND`` / ``OWN`` / ``PARTNER``) expanded to pixels: ``lam[b]`` in
  blended cells, 1 in own cells, 0 in partner cells (and any other code, as the blend engine reads it).
  Its mean over the pixels is ``lam_eff[b]``.
* visibility of each source's object: ``vis_own = sum(m[b] * w_own) / sum(m[b])`` and
  ``vis_partner = sum(m[a] * (1 - w_own)) / sum(m[a])``. A blended pixel shows ``lam`` of one object and
  ``1 - lam`` of the other. An empty mask counts as invisible (0): there is nothing to see.
* evidence share of the own source: ``e_own = vis_own / (vis_own + vis_partner)``, and 0.5 when neither
  object is visible (0 / 0: no evidence for either label).
* **mismatch** ``|lam_eff[b] - e_own[b]|``: half the L1 distance between the label distribution
  ``(lam_eff, 1 - lam_eff)`` and the evidence distribution ``(e_own, 1 - e_own)`` over the two sources.
* **label mass on hidden objects**: ``lam_eff[b] * [vis_own < 0.1] + (1 - lam_eff[b]) * [vis_partner < 0.1]``,
  the label weight given to a source of which less than 10 % (``HIDDEN_VISIBILITY``) is visible.

Both are averaged over the samples. A sample mixed with itself (``perm[b] == b``, and every sample of a
batch the mixer passed through) is its own image, unchanged: mismatch 0, no hidden mass. The two sources
are counted apart even where they share a class (the metric is about where the label weight goes, not
about the class it names).

``label_evidence`` runs a mixer over batches of a dataset with masks (``shapes_dataset(...,
with_masks=True)``) and averages the metric; ``python -m rmix_fast.training.evidence`` is its command line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from rmix_fast.mixers import Mixer, MixParams
from rmix_fast.ops import BLEND, OWN
from rmix_fast.saliency import input_gradient
from rmix_fast.training.models import PixelClassifier, build_model
from rmix_fast.training.seeding import mix_seed

__all__ = [
    "HIDDEN_VISIBILITY",
    "SALIENCY_SOURCES",
    "box_masks",
    "evidence_terms",
    "label_evidence",
    "mix_evidence_terms",
    "own_weight_map",
]

HIDDEN_VISIBILITY = 0.1  # an object less visible than this counts as hidden
SALIENCY_SOURCES = ("model", "mask", "box")  # what the grad of a saliency-guided mixer is made from
_TAG = 0x65766964  # "evid": keeps these streams apart from the training streams (``seeding``)
_ORDER, _MIX, _INIT = 0, 1, 2


def own_weight_map(regions: Tensor, lam: Tensor, height: int, width: int) -> Tensor:
    """(B, gh, gw) region codes and (B,) lam -> (B, H, W) float64 weight of ``x[b]`` in each pixel of
    ``mixed[b]``: lam where ``BLEND``, 1 where ``OWN``, 0 elsewhere (the engine reads other codes as
    ``PARTNER``). Each cell covers (H / gh) x (W / gw) pixels, as in the blend engine."""
    B, gh, gw = regions.shape
    if height % gh or width % gw:
        raise ValueError(f"a ({gh}, {gw}) region map does not divide a {height}x{width} image")
    lam64 = lam.to(torch.float64).reshape(-1, 1, 1).expand(B, 1, 1)
    cells = torch.where(regions == BLEND, lam64, (regions == OWN).to(torch.float64))
    return cells.repeat_interleave(height // gh, dim=1).repeat_interleave(width // gw, dim=2)


def _visibility(masks: Tensor, weight: Tensor) -> Tensor:
    """(B, H, W) masks and (B, H, W) weights -> (B,) weighted share of each mask; 0 for an empty mask."""
    m = masks.to(torch.float64)
    area = m.sum(dim=(1, 2))
    seen = (m * weight).sum(dim=(1, 2))
    return torch.where(area > 0, seen / area.clamp(min=1), torch.zeros_like(area))


def evidence_terms(masks: Tensor, perm: Tensor, w_own: Tensor, lam_eff: Tensor) -> dict[str, Tensor]:
    """The per-sample terms of the metric (module docstring), all (B,) float64.

    Args:
        masks: (B, H, W) bool object masks of the unmixed batch.
        perm: (B,) partner of each sample.
        w_own: (B, H, W) weight of ``x[b]`` in ``mixed[b]`` (``own_weight_map``).
        lam_eff: (B,) label weight of each sample's own class.

    Returns:
        ``vis_own``, ``vis_partner``, ``e_own``, ``mismatch`` and ``hidden_mass``.
    """
    if masks.dim() != 3 or masks.shape != w_own.shape:
        raise ValueError(f"masks and w_own must both be (B, H, W), got {tuple(masks.shape)} and {tuple(w_own.shape)}")
    B = masks.shape[0]
    if perm.shape != (B,) or lam_eff.shape != (B,):
        raise ValueError(f"perm and lam_eff must be ({B},), got {tuple(perm.shape)} and {tuple(lam_eff.shape)}")
    perm = perm.long().to(masks.device)
    lam = lam_eff.to(torch.float64).to(masks.device)
    w_own = w_own.to(torch.float64)
    itself = perm == torch.arange(B, device=masks.device)
    # A sample mixed with itself is its own image unchanged (a blend or copy of x[b] with x[b]): its object
    # is all there and all of the label is that object's, whatever area split the map records.
    vis_own = torch.where(itself, 1.0, _visibility(masks, w_own))
    vis_partner = torch.where(itself, 1.0, _visibility(masks[perm], 1.0 - w_own))
    total = vis_own + vis_partner
    e_own = torch.where(total > 0, vis_own / total.clamp(min=1e-300), 0.5)
    e_own = torch.where(itself, lam, e_own)
    hidden = lam * (vis_own < HIDDEN_VISIBILITY) + (1.0 - lam) * (vis_partner < HIDDEN_VISIBILITY)
    return {
        "vis_own": vis_own,
        "vis_partner": vis_partner,
        "e_own": e_own,
        "mismatch": (lam - e_own).abs(),
        "hidden_mass": hidden,
    }


def mix_evidence_terms(params: MixParams, masks: Tensor) -> dict[str, Tensor]:
    """``evidence_terms`` of the batch a mixer just mixed (its ``last_params``); a batch it passed through
    (``applied`` False) counts as every sample mixed with itself."""
    B, H, W = masks.shape
    if not params.applied:
        itself = torch.arange(B, device=masks.device)
        ones = torch.ones(B, dtype=torch.float64, device=masks.device)
        return evidence_terms(masks, itself, torch.ones_like(masks, dtype=torch.float64), ones)
    regions = params.region_map()
    if regions is None or params.perm is None or params.lam is None or params.lam_eff is None:
        raise ValueError("the mixer's last_params has no region map, perm, lam and lam_eff to measure")
    w_own = own_weight_map(regions.to(masks.device), params.lam.to(masks.device), H, W)
    return evidence_terms(masks, params.perm, w_own, params.lam_eff)


def box_masks(masks: Tensor) -> Tensor:
    """(B, H, W) bool masks -> the filled tight box of each (an empty mask stays empty)."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (B, H), (B, W)

    def span(occupied: Tensor) -> Tensor:  # (B, L) -> (B, L) True from the first to the last occupied index
        occ = occupied.to(torch.uint8)  # cummax has no bool kernel
        return (occ.cummax(dim=1).values & occ.flip(1).cummax(dim=1).values.flip(1)).bool()

    return span(rows)[:, :, None] & span(cols)[:, None, :]


def _default_model(num_classes: int, in_channels: int, seed: int, mean: Any, std: Any) -> nn.Module:
    """A freshly initialised small_cnn behind its normalisation, its weights drawn from ``seed`` without
    touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(_TAG, seed, _INIT))
        net = build_model("small_cnn", num_classes, in_channels=in_channels)
    return PixelClassifier(net, mean, std)


def _dataset_batches(
    data: Any, batches: int, batch_size: int, generator: torch.Generator
) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
    """``batches`` random batches (without replacement inside a batch) of ``data``'s raw images in [0, 1],
    labels and masks: no crop or flip, so the masks stay aligned with the pixels."""
    n = len(data.labels)
    size = min(batch_size, n)
    for _ in range(batches):
        idx = torch.randperm(n, generator=generator)[:size]
        yield data.images[idx].float().div_(255.0), data.labels[idx], data.masks[idx]


def label_evidence(
    mixer: Mixer,
    data: Any,
    *,
    model: nn.Module | None = None,
    saliency: str = "model",
    batches: int = 20,
    batch_size: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mismatch and label mass on hidden objects (module docstring) of ``mixer`` over ``batches`` batches.

    Args:
        mixer: any mixer; its ``generator`` is replaced by one seeded from ``seed`` for the call (and put
            back), so the same seed gives the same draws, and two mixers of one method get the same perm,
            lam and levels (R-Mix with a model's saliency and with the oracle's differ only in the saliency).
        data: a dataset with ``images`` (N, C, H, W) uint8, ``labels`` (N,) and ``masks`` (N, H, W) bool
            (``shapes_dataset(..., with_masks=True)``), from which ``batches`` batches of ``batch_size``
            are drawn; or an iterable of ``(x, y, masks)`` batches (x in [0, 1]), all of which are used.
        model: the saliency model (pixels in [0, 1] -> logits) for a mixer that needs the input gradient,
            run as given (rmix-train's saliency pass runs in train mode) with ``batchnorm="keep"``, so the
            model is left as it was. Default: a freshly initialised small_cnn (seeded from ``seed``) in
            train mode, with the dataset's normalisation.
        saliency: the grad handed to a mixer that needs one: ``"model"`` (the input gradient of ``model``),
            ``"mask"`` (the object mask broadcast to (B, C, H, W): R-Mix's cell saliency becomes each cell's
            object coverage) or ``"box"`` (the same with the object's filled tight box).
        batches, batch_size: how many batches to draw from a dataset, and their size.
        seed: seeds the batch draws, the mixer's draws and the default model.
        device: where the batches, the model and the mix run.

    Returns:
        ``mismatch`` and ``hidden_mass`` (means over samples, in [0, 1]) and ``n`` (samples measured).
    """
    if saliency not in SALIENCY_SOURCES:
        raise ValueError(f"saliency must be one of {SALIENCY_SOURCES}, got {saliency!r}")
    for name, value in (("batches", batches), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    device = torch.device(device)
    if hasattr(data, "images"):
        if getattr(data, "masks", None) is None:
            raise ValueError("data has no object masks: build it with shapes_dataset(..., with_masks=True)")
        order = torch.Generator().manual_seed(mix_seed(_TAG, seed, _ORDER))
        source: Iterable[tuple[Tensor, Tensor, Tensor]] = _dataset_batches(data, batches, batch_size, order)
    else:
        source = data
    if mixer.needs_grad and saliency == "model" and model is None:
        if not hasattr(data, "images"):
            raise ValueError("pass a model (or saliency='mask' / 'box'): batches carry no normalisation to build one")
        model = _default_model(mixer.num_classes, data.images.shape[1], seed, data.mean, data.std)
    if model is not None:
        model.to(device)
    saved_generator = mixer.generator
    mixer.generator = torch.Generator().manual_seed(mix_seed(_TAG, seed, _MIX))
    sums = torch.zeros(2, dtype=torch.float64)
    n = 0
    try:
        for x, y, masks in source:
            x, y, masks = x.to(device), y.to(device), masks.to(device)
            grad = None
            if mixer.needs_grad:
                if saliency == "model":
                    assert model is not None  # built above
                    grad = input_gradient(model, x, y, batchnorm="keep")
                else:
                    shown = masks if saliency == "mask" else box_masks(masks)
                    grad = shown.unsqueeze(1).expand_as(x).to(x.dtype)
            with torch.no_grad():
                mixer(x, y, grad)
            assert mixer.last_params is not None
            terms = mix_evidence_terms(mixer.last_params, masks)
            sums += torch.stack([terms["mismatch"].sum(), terms["hidden_mass"].sum()]).cpu()
            n += masks.shape[0]
    finally:
        mixer.generator = saved_generator
    if n == 0:
        raise ValueError("no batches to measure")
    return {"mismatch": float(sums[0]) / n, "hidden_mass": float(sums[1]) / n, "n": n}
