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

from rmix_fast import input_gradient, reference
from rmix_fast.sampling import paper_levels
from rmix_fast.training.batches import to_pixels
from rmix_fast.training.data import InMemoryVisionDataset, build_dataset
from rmix_fast.training.models import PixelClassifier, build_model


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
    out: dict[str, Any] = {"levels": [round(q, 4) for q in qs.tolist()], "per_grid": {}}
    for p in grids:
        per: dict[str, Any] = {}
        for kind in kinds:
            per[f"{kind}_per_level"] = (counts[kind, p] / cells[p]).tolist()
            per[kind] = float(counts[kind, p].sum() / (cells[p] * levels))
        out["per_grid"][str(p)] = per
    # As training draws them: p uniform over the grids, q uniform over the levels.
    for kind in kinds:
        out[kind] = sum(v[kind] for v in out["per_grid"].values()) / len(grids)
    return out


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="preactresnet18")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--train-images", type=int, default=5000)
    ap.add_argument("--test-images", type=int, default=512)
    ap.add_argument("--out", type=Path, help="also write the figures to <OUT>.json")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False")
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
