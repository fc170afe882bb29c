"""How often the half-resolution saliency pass (``input_gradient(..., resolution=0.5)``) picks the same
R-Mix cells as the full-resolution pass, on a model trained briefly on ``shapes``.

    python bench/studies/mask_agreement.py --device cpu --model preactresnet18 --image-size 32
    python bench/studies/mask_agreement.py --device cpu --model small_cnn --out /tmp/agreement   # + JSON

For every held-out image, grid p and percentile level q, both gradients go through the op's own saliency
and threshold steps (``reference.cell_saliency`` and ``saliency_mask``); the figure is the fraction of
cells whose top / not-top decision is identical. As a floor it also reports the agreement of the
full-resolution mask with the half-resolution mask of a *different* image at the same q: what the
percentile alone makes agree (at q = 0 every cell is top, so everything agrees). As a ceiling it reports how
stable the full-resolution mask is itself: the same images with each half of the batch in a batch of its own,
i.e. other BatchNorm statistics, as a training batch of another composition would see. ``bench_step.py``
runs it beside its timings (``--agreement``).

``--saliency amortised`` measures amortised saliency instead (``rmix-train --saliency-source amortised``): the
model is trained with ``AmortisedRMix`` for ``--epochs`` epochs of the training set (the store fills in the first
and serves every later batch), and on the first ``--eval-images`` training images (the store holds training
samples) each stored map is thresholded against the fresh full-resolution mask of a new augmented view of the
image, as the next epoch would draw it ("agreement"), and against the fresh mask of the very view it was stored
from ("same_view": what is left is one epoch of training and the kind of gradient, the mixed loss's routed
through the blend against the clean loss's). Floor: another image's stored map; ceiling: the fresh mask with the
batch regrouped, as above.

    python bench/studies/mask_agreement.py --device cpu --model small_cnn --saliency amortised --epochs 13
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common

from rmix_fast import AmortisedRMix, SoftTargetCrossEntropy, input_gradient, reference
from rmix_fast.mixers.amortised_rmix import pool_cells
from rmix_fast.sampling import paper_levels
from rmix_fast.training.batches import to_pixels
from rmix_fast.training.data import InMemoryVisionDataset, build_dataset
from rmix_fast.training.models import PixelClassifier, build_model


def _agreement_summary(counts: dict, cells: dict, grids, kinds, qs: torch.Tensor, levels: int) -> dict[str, Any]:
    """Per grid and level the share of cells whose masks agree, per grid over the levels, and over all (p
    uniform over the grids, q over the levels, as training draws them)."""
    out: dict[str, Any] = {"levels": [round(q, 4) for q in qs.tolist()], "per_grid": {}}
    for p in grids:
        per: dict[str, Any] = {}
        for kind in kinds:
            per[f"{kind}_per_level"] = (counts[kind, p] / cells[p]).tolist()
            per[kind] = float(counts[kind, p].sum() / (cells[p] * levels))
        out["per_grid"][str(p)] = per
    for kind in kinds:
        out[kind] = sum(v[kind] for v in out["per_grid"].values()) / len(grids)
    return out


def train_briefly(
    model: nn.Module, data: InMemoryVisionDataset, device: torch.device, *, steps: int, batch: int, seed: int
) -> float:
    """SGD with OneCycleLR (no mixing) for ``steps`` batches; returns the seconds it took."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(data.labels), (batch,), generator=g)
        x = to_pixels(data.images[idx].to(device), augment=True, generator=g)
        loss = F.cross_entropy(model(x), data.labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(model: nn.Module, data: InMemoryVisionDataset, device: torch.device, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data.labels), batch):
        x = to_pixels(data.images[i : i + batch].to(device), augment=False)
        correct += int((model(x).argmax(1).cpu() == data.labels[i : i + batch]).sum())
    model.train()
    return 100.0 * correct / len(data.labels)


def _regrouped_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Full-resolution gradient with each half of the batch in a batch of its own: the same images, other
    BatchNorm batch statistics, as a training batch of another composition would give them."""
    half = x.shape[0] // 2
    if half == 0:
        return input_gradient(model, x, y, batchnorm="keep")
    parts = [input_gradient(model, x[s], y[s], batchnorm="keep") for s in (slice(None, half), slice(half, None))]
    return torch.cat(parts)


def agreement(
    model: nn.Module,
    data: InMemoryVisionDataset,
    device: torch.device,
    *,
    grids: Sequence[int] = (2, 4),
    levels: int = 10,
    batch: int = 128,
) -> dict[str, Any]:
    """Fraction of identical mask cells per grid and level over ``data``: full vs half resolution
    ("agreement"), full vs another image's half-resolution mask ("other_image", the floor), and full vs full
    with the batch regrouped ("regrouped_batch", how stable the full-resolution mask itself is)."""
    qs = paper_levels(levels)
    kinds = ("agreement", "other_image", "regrouped_batch")
    counts = {(kind, p): torch.zeros(levels, dtype=torch.float64) for kind in kinds for p in grids}
    cells = dict.fromkeys(grids, 0)
    model.train()  # the saliency pass runs in training mode, as in a training step
    for i in range(0, len(data.labels), batch):
        x = to_pixels(data.images[i : i + batch].to(device), augment=False)
        y = data.labels[i : i + batch].to(device)
        grads = {
            "full": input_gradient(model, x, y, batchnorm="keep"),
            "half": input_gradient(model, x, y, batchnorm="keep", resolution=0.5),
            "regrouped": _regrouped_gradient(model, x, y),
        }
        B = x.shape[0]
        for p in grids:
            sal = {name: reference.cell_saliency(g, p) for name, g in grads.items()}
            for k, q in enumerate(qs.tolist()):
                q_vec = torch.full((B,), q, device=device)
                m = {name: reference.saliency_mask(v, q_vec) for name, v in sal.items()}
                counts["agreement", p][k] += float((m["full"] == m["half"]).sum())
                counts["other_image", p][k] += float((m["full"] == m["half"].roll(1, dims=0)).sum())
                counts["regrouped_batch", p][k] += float((m["full"] == m["regrouped"]).sum())
            cells[p] += B * p * p
    return _agreement_summary(counts, cells, grids, kinds, qs, levels)


def measure(model_name: str, image_size: int, device: torch.device, *, steps: int, batch: int, train_images: int,
            test_images: int, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Train ``model_name`` briefly on ``shapes`` at ``image_size``, then measure the agreement."""
    torch.manual_seed(seed)
    train = build_dataset("shapes", "train", image_size=image_size, seed=seed, size=train_images)
    test = build_dataset("shapes", "test", image_size=image_size, seed=seed, size=test_images)
    assert isinstance(train, InMemoryVisionDataset) and isinstance(test, InMemoryVisionDataset)
    # Pixels in [0, 1], normalised inside the model: the saliency is taken on the pixels, as rmix-train does.
    model = PixelClassifier(build_model(model_name, len(train.classes)), train.mean, train.std).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    seconds = train_briefly(model, train, device, steps=steps, batch=batch, seed=seed)
    result = agreement(model, test, device)
    return {"model": model_name, "image_size": image_size, "train_steps": steps, "batch": batch,
            "train_images": train_images, "test_images": test_images, "train_seconds": seconds,
            "test_accuracy": accuracy(model, test, device), **result}  # fmt: skip


def train_amortised(
    model: nn.Module, data: InMemoryVisionDataset, device: torch.device, *, epochs: int, batch: int, seed: int,
    keep: int, grids: Sequence[int] = (2, 4),
) -> tuple[AmortisedRMix, Tensor, float]:  # fmt: skip
    """R-Mix with amortised saliency, as rmix-train runs it, for ``epochs`` epochs of ``data`` (each sample once an
    epoch, the last partial batch dropped; random crop and flip), SGD and OneCycleLR as ``train_briefly``.
    Returns the mixer (its store), the augmented view each of samples 0..keep-1 had when its map was last
    stored, and the seconds it took."""
    g = torch.Generator().manual_seed(seed)
    n = len(data.labels)
    mixer = AmortisedRMix(len(data.classes), grids=grids, generator=torch.Generator().manual_seed(seed + 1),
                          num_samples=n).to(device)  # fmt: skip
    steps_per_epoch = n // batch
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=epochs * steps_per_epoch)
    loss_fn = SoftTargetCrossEntropy()
    views = torch.zeros(keep, *data.images.shape[1:])
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for b in range(steps_per_epoch):
            idx = order[b * batch : (b + 1) * batch]
            x = to_pixels(data.images[idx].to(device), augment=True, generator=g)
            y = data.labels[idx].to(device)
            grad = input_gradient(model, x, y) if mixer.needs_grad_for(idx) else None
            x_mix, y_soft = mixer(x, y, grad, indices=idx)
            loss = loss_fn(model(x_mix), y_soft)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            mixer.after_backward()
            opt.step()
            schedule.step()
            mine = idx < keep
            views[idx[mine]] = x[mine.to(device)].detach().cpu()
        mixer.end_epoch()
    return mixer, views, time.perf_counter() - start


def amortised_agreement(
    model: nn.Module,
    mixer: AmortisedRMix,
    data: InMemoryVisionDataset,
    views: Tensor,
    device: torch.device,
    *,
    levels: int = 10,
    batch: int = 128,
    seed: int = 0,
) -> dict[str, Any]:
    """Fraction of identical mask cells per grid and level over training samples 0..len(views)-1: the stored
    map against the fresh mask of a new augmented view ("agreement") and of the view it was stored from
    ("same_view"), another image's stored map against the fresh mask ("other_image", the floor), and the fresh
    mask with the batch regrouped ("regrouped_batch", the ceiling)."""
    g = torch.Generator().manual_seed(seed + 2)
    grids, qs = mixer.grids, paper_levels(levels)
    kinds = ("agreement", "same_view", "other_image", "regrouped_batch")
    counts = {(kind, p): torch.zeros(levels, dtype=torch.float64) for kind in kinds for p in grids}
    cells = dict.fromkeys(grids, 0)
    model.train()
    for i in range(0, views.shape[0], batch):
        idx = torch.arange(i, min(i + batch, views.shape[0]))
        x = to_pixels(data.images[idx].to(device), augment=True, generator=g)  # the view of a next epoch
        y = data.labels[idx].to(device)
        grads = {
            "fresh": input_gradient(model, x, y, batchnorm="keep"),
            "same_view": input_gradient(model, views[idx].to(device), y, batchnorm="keep"),
            "regrouped": _regrouped_gradient(model, x, y),
        }
        stored, seen = mixer.store.lookup(idx)
        assert bool(seen.all()), "every sample evaluated must have been stored"
        B = idx.shape[0]
        for p in grids:
            sal = {name: reference.cell_saliency(v, p) for name, v in grads.items()}
            sal["stored"] = pool_cells(stored, p)
            for k, q in enumerate(qs.tolist()):
                q_vec = torch.full((B,), q, device=device)
                m = {name: reference.saliency_mask(v, q_vec) for name, v in sal.items()}
                counts["agreement", p][k] += float((m["stored"] == m["fresh"]).sum())
                counts["same_view", p][k] += float((m["stored"] == m["same_view"]).sum())
                counts["other_image", p][k] += float((m["stored"].roll(1, dims=0) == m["fresh"]).sum())
                counts["regrouped_batch", p][k] += float((m["fresh"] == m["regrouped"]).sum())
            cells[p] += B * p * p
    return _agreement_summary(counts, cells, grids, kinds, qs, levels)


def measure_amortised(
    model_name: str, image_size: int, device: torch.device, *, epochs: int, batch: int, train_images: int,
    test_images: int, eval_images: int, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Train ``model_name`` with amortised R-Mix on ``shapes``, then measure the stored maps' agreement."""
    torch.manual_seed(seed)
    train = build_dataset("shapes", "train", image_size=image_size, seed=seed, size=train_images)
    test = build_dataset("shapes", "test", image_size=image_size, seed=seed, size=test_images)
    assert isinstance(train, InMemoryVisionDataset) and isinstance(test, InMemoryVisionDataset)
    model = PixelClassifier(build_model(model_name, len(train.classes)), train.mean, train.std).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    keep = min(eval_images, train_images)
    mixer, views, seconds = train_amortised(model, train, device, epochs=epochs, batch=batch, seed=seed, keep=keep)
    result = amortised_agreement(model, mixer, train, views, device, seed=seed)
    return {"saliency": "amortised", "model": model_name, "image_size": image_size, "train_epochs": epochs,
            "train_steps": epochs * (train_images // batch), "batch": batch, "train_images": train_images,
            "test_images": test_images, "eval_images": keep, "train_seconds": seconds,
            "test_accuracy": accuracy(model, test, device), **result}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="preactresnet18")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--train-images", type=int, default=5000)
    ap.add_argument("--test-images", type=int, default=512)
    ap.add_argument("--saliency", choices=("half", "amortised"), default="half",
                    help="the saliency compared with the fresh full-resolution pass")  # fmt: skip
    ap.add_argument("--epochs", type=int, default=13, help="amortised: training epochs (13 x 46 = 598 steps)")
    ap.add_argument("--eval-images", type=int, default=512, help="amortised: training images compared")
    ap.add_argument("--out", type=Path, help="also write the figures to <OUT>.json")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False")
    if a.saliency == "amortised":
        r = measure_amortised(a.model, a.image_size, torch.device(a.device), epochs=a.epochs, batch=a.batch,
                              train_images=a.train_images, test_images=a.test_images,
                              eval_images=a.eval_images)  # fmt: skip
        print(f"{a.model} @ {a.image_size}, amortised R-Mix {a.epochs} epochs: test accuracy "
              f"{r['test_accuracy']:.1f} %, stored against fresh masks {100 * r['agreement']:.1f} % of cells (the "
              f"view it was stored from: {100 * r['same_view']:.1f} %; another image's map: "
              f"{100 * r['other_image']:.1f} %; fresh with the batch regrouped: "
              f"{100 * r['regrouped_batch']:.1f} %)")  # fmt: skip
    else:
        r = measure(a.model, a.image_size, torch.device(a.device), steps=a.steps, batch=a.batch,
                    train_images=a.train_images, test_images=a.test_images)  # fmt: skip
        print(f"{a.model} @ {a.image_size}: test accuracy {r['test_accuracy']:.1f} %, mask agreement "
              f"{100 * r['agreement']:.1f} % (other image: {100 * r['other_image']:.1f} %, full resolution with the "
              f"batch regrouped: {100 * r['regrouped_batch']:.1f} %)")  # fmt: skip
    if a.out:
        command = "python bench/studies/mask_agreement.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        common.write_json(a.out.with_suffix(".json"), {**common.environment(torch.device(a.device), command), **r})
        print(f"wrote {a.out.with_suffix('.json')}")
    return r


if __name__ == "__main__":
    main()
