"""Manifold Mixup (Verma et al. 2019): mixup of the hidden activations at a layer drawn per batch.

The mix happens inside the network's forward, so the mixer takes the modules whose outputs it may mix and
hooks the chosen one for a single forward (``ManifoldMixup.mixing``). The hidden tensor goes through the
same blend engine as the images of the other mixers: ``blend_regions`` with one ``BLEND`` cell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from rmix_fast.mixers.base import Mixer, MixParams
from rmix_fast.ops import BLEND, blend_regions
from rmix_fast.sampling import to_device

__all__ = ["ManifoldMixup", "mix_output_once"]


class ManifoldMixup(Mixer):
    """Manifold Mixup: per batch a layer k uniformly from {the input, the output of ``layers[0]``, ...,
    of ``layers[-1]``}, lam ~ Beta(alpha, alpha) (Verma et al.'s CIFAR default alpha = 2) and a random
    partner per sample; the forward then continues from ``lam*h + (1-lam)*h[perm]`` at that layer and the
    labels mix by lam. ``layers`` are the modules ending the network's first stages, in forward order
    (the authors' PreAct ResNet and WRN code mixes at the input, after stage 1 or after stage 2).

        with mixer.mixing(x, y, layers=[net.layer1, net.layer2]) as (x_in, y_soft):
            logits = model(x_in)

    ``mixer(x, y)`` (no layers) can only draw the input: it is Mixup with this mixer's draws. Draws, in
    this order, from ``generator``: the ``prob`` coin (when prob < 1), k, lam, the partners.

    As the published code: one lam per batch (``per_sample_lam`` draws one per sample), a uniform random
    permutation as partners, soft targets ``lam*y + (1-lam)*y[perm]``. The input layer mixes the images the
    model receives; for a model that normalises its input (``(x - mean) / std``) first, that is the same
    mix up to rounding, since the normalisation is affine.

    Not for a ``torch.compile``'d model: dynamo does not guard on module hooks, so a compiled forward may
    skip a hook added after its trace (or keep one from its trace). Where it skips it, the hook never
    fires and leaving the block raises ``RuntimeError`` instead of training unmixed images against mixed
    labels. Other arguments are ``Mixer``'s.
    """

    def __init__(self, num_classes: int, *, alpha: float = 2.0, **common: Any) -> None:
        super().__init__(num_classes, alpha=alpha, **common)

    def forward(
        self, x: Tensor, y: Tensor, grad: Tensor | None = None, *, logits: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mixup at the input (the only layer without ``layers``): ``x_mix, y_soft`` like every mixer."""
        with self.mixing(x, y, grad) as mixed:
            return mixed

    @contextmanager
    def mixing(
        self,
        x: Tensor,
        y: Tensor,
        grad: Tensor | None = None,
        *,
        layers: Sequence[nn.Module] = (),
        logits: Tensor | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yields ``(x_in, y_soft)``: the mixed images when the input was drawn, else ``x`` itself, with a
        one-shot hook on the drawn layer that mixes its output in the block's forward. The hook is removed
        on leaving the block, whatever happens in it; ``RuntimeError`` if the block's forward never ran the
        hooked layer (its labels would not match the logits)."""
        layers = _check_layers(layers)
        targets = self.prepare_targets(x, y, grad)
        if not self.draw_applied():
            self.last_params = MixParams(applied=False)
            yield x, targets
            return
        B = x.shape[0]
        layer = int(torch.randint(len(layers) + 1, (1,), generator=self.generator))  # a CPU draw: no sync
        lam = self.draw_lam(B)
        perm = torch.randperm(B, generator=self.generator)
        perm, lam = to_device(perm, x.device), to_device(lam, x.device)
        regions = torch.full((B, 1, 1), BLEND, dtype=torch.int8, device=x.device)
        # one BLEND cell: the label weight is lam itself (the op's lam_eff is (1 * lam + 0) / 1, exact), so the
        # targets are known before the forward has produced the hidden tensor
        params = MixParams(True, perm, lam, lam, regions=regions, layer=layer)
        self.last_params = params
        y_soft = self.mix_targets(targets, params)

        def blend(h: Tensor) -> Tensor:
            # the draws are valid by construction: skip the content checks and their sync
            mixed, _ = blend_regions(h, perm=perm, lam=lam, regions=regions, backend=self.backend, validate=False)
            return mixed

        if layer == 0:
            yield blend(x), y_soft
            return
        with mix_output_once(layers[layer - 1], _as_feature_map(blend, B, layer)) as fired:
            yield x, y_soft
        if not fired():
            raise RuntimeError(
                f"the forward inside ManifoldMixup.mixing() did not run layer {layer} "
                f"({type(layers[layer - 1]).__name__}): pass modules that the model's forward calls (a model "
                "compiled with torch.compile does not run hooks added after it was traced)"
            )


@contextmanager
def mix_output_once(module: nn.Module, mix: Callable[[Tensor], Tensor]) -> Iterator[Callable[[], bool]]:
    """Replaces ``module``'s output by ``mix(output)`` on its first call inside the block (later calls pass
    through), and removes the hook on leaving the block, also on an exception. Yields a function that says
    whether the hook has fired."""
    fired = False

    def hook(mod: nn.Module, args: Any, output: Any) -> Any:
        nonlocal fired
        if fired:
            return None  # None keeps the output as it is
        fired = True
        return mix(output)

    handle = module.register_forward_hook(hook)
    try:
        yield lambda: fired
    finally:
        handle.remove()


def _as_feature_map(blend: Callable[[Tensor], Tensor], batch: int, layer: int) -> Callable[[Any], Tensor]:
    """``blend`` for a hidden output of any shape (B, ...): a 4-D feature map as it is (its memory format
    kept), anything else viewed as (B, D, 1, 1), which one ``BLEND`` cell mixes element by element as well."""

    def mix(h: Any) -> Tensor:
        if not isinstance(h, Tensor) or not h.is_floating_point() or h.dim() < 2 or h.shape[0] != batch:
            raise ValueError(
                f"Manifold Mixup's layer {layer} must output a float tensor (B={batch}, ...), got {h!r:.80}"
            )
        if h.dim() == 4:
            return blend(h)
        return blend(h.reshape(batch, -1, 1, 1)).reshape(h.shape)

    return mix


def _check_layers(layers: Sequence[nn.Module]) -> tuple[nn.Module, ...]:
    if isinstance(layers, nn.ModuleList):
        return tuple(layers)
    # a single module (even an nn.Sequential) is refused: it would be unclear whether it or its children are meant
    if isinstance(layers, nn.Module) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a sequence of nn.Module, got {type(layers).__name__}")
    bad = [type(m).__name__ for m in layers if not isinstance(m, nn.Module)]
    if bad:
        raise TypeError(f"layers must hold nn.Module instances only, got {bad}")
    return tuple(layers)
