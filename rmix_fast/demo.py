"""A short R-Mix demo: train a tiny CNN on synthetic shapes, mix a batch, draw what happened.

Run ``python -m rmix_fast.demo [--out rmix_demo.png] [--steps N] [--batch B] [--seed S] [--backend auto]``.
Everything is generated in memory from one ``torch.Generator``, so a seed gives the same picture; the
defaults finish in seconds on a laptop CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rmix_fast
from rmix_fast import viz
from rmix_fast._backends import resolve_backend

__all__ = ["CLASS_NAMES", "main", "make_shapes"]

CLASS_NAMES = ("square", "disc", "cross", "triangle")


def make_shapes(n: int, generator: torch.Generator, size: int = 32) -> tuple[Tensor, Tensor]:
    """``n`` synthetic RGB images of one small shape each, on a cluttered, noisy background.

    The class is carried only by the object's shape (0 square, 1 disc, 2 cross, 3 triangle), so a
    classifier's input gradient should concentrate on the object, which fills a few percent of the
    image: exactly the situation saliency-guided mixing is built for.

    * background: a smooth, muted colour field (a bilinearly upsampled 4x4 random grid), pixel noise,
      and a few small grey specks as clutter;
    * object: a saturated random colour, radius 12-19% of ``size``, at a random position fully inside
      the image.

    Args:
        n: number of images.
        generator: the only source of randomness (the same generator state gives the same images).
        size: side length in pixels (>= 16).

    Returns:
        ``images``: (n, 3, size, size) float32 in [0, 1]; ``labels``: (n,) int64 in 0..3.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    g = generator

    # Background: low-contrast colour blobs around mid grey, so the object's colour stands out.
    coarse = 0.5 + 0.15 * (torch.rand(n, 3, 4, 4, generator=g) * 2 - 1)
    images = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = images + 0.06 * torch.randn(n, 3, size, size, generator=g)
    # Clutter: 2x2 grey specks, too small and colourless to pass for an object.
    speck = torch.rand(n, 1, size // 2, size // 2, generator=g) < 0.03
    speck = speck.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    shade = torch.rand(n, 1, 1, 1, generator=g)
    images = torch.where(speck, shade.expand(n, 3, 1, 1), images)

    labels = torch.randint(len(CLASS_NAMES), (n,), generator=g)
    r = size * (0.12 + 0.07 * torch.rand(n, 1, 1, generator=g))
    margin = r + 1
    cx = margin + (size - 1 - 2 * margin) * torch.rand(n, 1, 1, generator=g)
    cy = margin + (size - 1 - 2 * margin) * torch.rand(n, 1, 1, generator=g)
    coords = torch.arange(size, dtype=torch.float32)
    dx = coords.view(1, 1, size) - cx  # (n, 1, size): column offset from the centre
    dy = coords.view(1, size, 1) - cy  # (n, size, 1): row offset from the centre
    adx, ady = dx.abs(), dy.abs()
    shapes = torch.stack(
        [
            (adx <= 0.8 * r) & (ady <= 0.8 * r),  # square (a bit smaller: same area as the disc, roughly)
            dx.square() + dy.square() <= r.square(),  # disc
            ((adx <= 0.3 * r) & (ady <= r)) | ((ady <= 0.3 * r) & (adx <= r)),  # cross
            (dy >= -r) & (dy <= r) & (adx <= (dy + r) / 2),  # triangle, apex up, base 2r wide
        ],
        dim=1,
    )  # (n, 4, size, size)
    obj = shapes[torch.arange(n), labels].unsqueeze(1)  # (n, 1, size, size)

    # Saturated colour: one channel high, one low, one random, in a random order.
    levels = torch.stack(
        [0.85 + 0.15 * torch.rand(n, generator=g), 0.1 * torch.rand(n, generator=g), torch.rand(n, generator=g)], dim=1
    )
    order = torch.argsort(torch.rand(n, 3, generator=g), dim=1)
    color = levels.gather(1, order).view(n, 3, 1, 1)
    images = torch.where(obj, color.expand(n, 3, size, size), images)
    return images.clamp(0.0, 1.0).contiguous(), labels


class SmallCNN(nn.Module):
    """Four 3x3 conv blocks and a global max pool. The max pool makes the decision (and so the input
    gradient) depend on where the object is, not on the background average; batch norm makes 150
    steps enough to learn the shapes from any seed."""

    def __init__(self, classes: int = len(CLASS_NAMES)) -> None:
        super().__init__()
        widths = (3, 12, 24, 48, 48)
        strides = (1, 2, 2, 1)
        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], strides, strict=True):
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride, bias=False)  # no bias: batch norm adds one
            layers += [conv, nn.BatchNorm2d(c_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))


def _train(model: nn.Module, steps: int, batch: int, generator: torch.Generator, device: torch.device) -> float:
    """Adam on fresh synthetic batches; returns the accuracy over the last (up to 20) training batches."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    recent: list[float] = []
    for _ in range(steps):
        images, labels = make_shapes(batch, generator)
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent = [*recent[-19:], float((logits.argmax(1) == labels).float().mean())]
    return sum(recent) / len(recent) if recent else float("nan")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rmix_fast.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="rmix_demo.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=150, help="training steps (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8, help="images mixed and drawn (default: %(default)s)")
    parser.add_argument("--train-batch", type=int, default=64, help="training batch size (default: %(default)s)")
    parser.add_argument("--grid", type=int, default=4, help="R-Mix grid p, must divide 32 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator (default: %(default)s)")
    parser.add_argument("--backend", default="auto", help="auto, reference, triton or cpp (default: auto)")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error(f"--steps must be >= 0, got {args.steps}")
    if args.batch < 1 or args.train_batch < 1:
        parser.error("--batch and --train-batch must be >= 1")
    if args.grid < 1 or 32 % args.grid:
        parser.error(f"--grid must divide the image size 32, got {args.grid}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit status (0)."""
    args = _parse(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)

    # The model's initialisation uses the global RNG: seed it, but leave the caller's state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = SmallCNN().to(device)
    train_acc = _train(model, args.steps, args.train_batch, generator, device)

    model.eval()
    test_images, test_labels = make_shapes(256, generator)
    with torch.no_grad():
        test_acc = float((model(test_images.to(device)).argmax(1) == test_labels.to(device)).float().mean())

    # The training-loop integration: saliency pass, then the mixer (the paper's draw, except for the grid,
    # fixed so the picture is easy to read). The model is in eval mode here, so no running stats move.
    images, labels = make_shapes(args.batch, generator)
    images, labels = images.to(device), labels.to(device)
    grad = rmix_fast.input_gradient(model, images, labels)
    mixer = rmix_fast.RMix(len(CLASS_NAMES), grids=(args.grid,), generator=generator, backend=args.backend)
    mixed, _ = mixer(images, labels, grad)
    params = mixer.last_params
    lam_eff, mask = params.lam_eff, params.mask
    saliency = rmix_fast.saliency_grid(grad, params.grid)
    out = viz.save_mix_grid(
        args.out, images, params.perm, saliency, mask, mixed, lam_eff, labels=labels, class_names=CLASS_NAMES
    )

    backend = resolve_backend(args.backend, device, params.grid)  # what rmix just ran
    print(
        f"trained {args.steps} steps (batch {args.train_batch}): train accuracy {train_acc:.1%} (last batches), "
        f"held-out accuracy {test_acc:.1%} ({len(test_labels)} fresh images)"
    )
    print(f"backend: {args.backend} -> {backend} ({rmix_fast.available_backends(device)[backend].reason})")
    print(f"grid {params.grid}, lam {float(params.lam[0]):.3f}, q {[round(v, 2) for v in params.q.tolist()]}")
    print(f"perm    {params.perm.tolist()}")
    print(f"lam_eff {[round(v, 3) for v in lam_eff.tolist()]}")
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
