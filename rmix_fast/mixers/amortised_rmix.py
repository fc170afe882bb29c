"""R-Mix with amortised saliency: each sample's saliency is the one the training backward gave it the last time
it was trained on (about an epoch old), kept in a ``SaliencyStore``, so a batch of samples seen before needs no
saliency pass; a batch holding a sample never seen runs the fresh pass, as the paper does every step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rmix_fast.mixers.base import MixParams
from rmix_fast.mixers.rmix import RMix
from rmix_fast.ops import rmix_cells
from rmix_fast.ops._checks import describe, is_integer_tensor
from rmix_fast.saliency_store import SaliencyStore, cell_map_from_gradient, gather_updates
from rmix_fast.sampling import RMixParams, to_device

__all__ = ["AmortisedRMix", "pool_cells"]


def pool_cells(cells: Tensor, grid: int) -> Tensor:
    """(B, g, g) cell map -> (B, p, p) for p = ``grid`` dividing g: each coarse cell the mean of the g/p x g/p
    fine cells it covers, which is the cell saliency at p of the same gradient (equal-size cells), up to
    rounding and the sample's scale (which the mask ignores)."""
    B, g, _ = cells.shape
    if grid == g:
        return cells
    k = g // grid
    return cells.reshape(B, grid, k, grid, k).mean(dim=(2, 4))


def _check_store_shape(mixer: AmortisedRMix, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Before a state is loaded: a mixer without a store yet gets one of the state's size; one whose store has
    another shape than the state's is a clear error (torch's own names only the buffer)."""
    maps = state.get(f"{prefix}store.maps")
    if not isinstance(maps, Tensor):
        return
    if maps.dim() != 3 or maps.shape[1:] != (mixer.store_grid, mixer.store_grid):
        raise ValueError(
            f"the state's saliency store holds maps of shape {tuple(maps.shape)} (samples, grid, grid), but this "
            f"mixer stores {mixer.store_grid} x {mixer.store_grid} maps (the finest of grids={mixer.grids})"
        )
    if mixer.store is None:
        mixer.set_dataset_size(maps.shape[0])
    elif maps.shape[0] != mixer.store.num_samples:
        raise ValueError(
            f"the state's saliency store holds {maps.shape[0]} samples, this mixer's {mixer.store.num_samples} "
            "(the training set's size)"
        )


class AmortisedRMix(RMix):
    """R-Mix whose saliency comes from a per-sample store filled by the training backward.

    ``x_mix, y_soft = mixer(x, y, grad, indices=idx)`` with the batch's dataset indices, then
    ``mixer.after_backward()`` once the loss of the mixed batch has run its backward::

        grad = rmix_fast.input_gradient(model, x, y) if mixer.needs_grad_for(idx) else None
        x_mix, y_soft = mixer(x, y, grad, indices=idx)
        criterion(model(x_mix), y_soft).backward()
        mixer.after_backward()  # stores each sample's map from d loss / d x

    Per batch: the same draws as ``RMix`` (the ``prob`` coin, p, lam, q, the partner). If ``grad`` is given
    (``needs_grad_for`` says so when some sample has never been stored) the mix is ``rmix`` on it, the paper's
    fresh pass; without it every sample's stored g x g map (g = the finest of ``grids``), pooled to p by
    averaging cells, goes through ``rmix_cells``: the same threshold and blend. Either way the un-mixed batch
    is made to require grad, so the training backward routes d loss / d mixed back to every original image
    (through its own image and the image it is the partner of: the blend's backward) at the cost of the
    network's input gradient; ``after_backward`` reduces that gradient to each sample's map
    (``cell_map_from_gradient``) and stores it (a sample whose gradient is not finite, e.g. in a float16 step
    the loss scaler skips, keeps its previous map). A batch the ``prob`` coin passes through is stored too
    (its gradient is then the clean loss's).

    The map of a sample is thus that of the mixed loss it was last trained with, as old as the interval
    between its visits (one epoch when every sample is drawn once an epoch). The decision "every sample
    stored" is read from a host copy of the store's flags, so a step never waits for the device; under
    ``torch.distributed`` every rank applies every rank's updates (``gather_updates``: the stores stay
    identical), and the host copy, which learns of other ranks' samples only then, is refreshed from the store
    at ``end_epoch`` (one device read an epoch). Samples are not met twice within an epoch there, so the
    decisions are those of a single process holding every rank's batches.

    Args:
        num_classes, alpha, grids, levels, prob, label_smoothing, per_sample_lam, generator, backend: as
            ``RMix``; every grid must divide the finest.
        num_samples: the training set's size (indices lie in [0, num_samples)); or call
            ``set_dataset_size`` before the first batch.
        store_dtype: the store's dtype (float16: 128 bytes an image at g = 8, see ``SaliencyStore``).

    State (``state_dict``): the store's maps and flags; ``load_state_dict`` rebuilds the host copy (one read).
    """

    needs_indices = True

    def __init__(
        self,
        num_classes: int,
        alpha: float = 1.0,
        grids: Sequence[int] = (2, 4),
        levels: int = 10,
        prob: float = 1.0,
        label_smoothing: float = 0.0,
        per_sample_lam: bool = False,
        generator: torch.Generator | None = None,
        backend: str = "auto",
        *,
        num_samples: int | None = None,
        store_dtype: torch.dtype = torch.float16,
    ) -> None:
        super().__init__(
            num_classes, alpha, grids, levels, prob, label_smoothing, per_sample_lam, generator, backend
        )  # fmt: skip
        self.store_grid = max(self.grids)
        bad = [p for p in self.grids if self.store_grid % p]
        if bad:
            raise ValueError(
                f"grids must all divide the finest grid {self.store_grid} (the stored maps are pooled to the drawn "
                f"grid), got grids={self.grids}"
            )
        self.store_dtype = store_dtype
        # where the store lives: follows .to(device) before any store exists
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        self.store: SaliencyStore | None = None
        self._seen_host = torch.zeros(0, dtype=torch.bool)  # the store's flags, on the host
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None  # (un-mixed batch, indices on host, on device)
        self._steps = [0, 0]  # this epoch's batches mixed from a fresh pass, from the store
        self.register_load_state_dict_pre_hook(_check_store_shape)
        self.register_load_state_dict_post_hook(lambda module, keys: module._mirror_store())
        if num_samples is not None:
            self.set_dataset_size(num_samples)

    # -- the store ----------------------------------------------------------------------------------------
    def set_dataset_size(self, num_samples: int) -> None:
        """A store for ``num_samples`` samples (empty), unless the mixer has one of that size already."""
        if self.store is not None and self.store.num_samples == num_samples:
            return
        self.store = SaliencyStore(num_samples, self.store_grid, dtype=self.store_dtype, device=self._anchor.device)
        self._seen_host = torch.zeros(num_samples, dtype=torch.bool)

    def _require_store(self) -> SaliencyStore:
        if self.store is None:
            raise RuntimeError(
                "AmortisedRMix has no saliency store yet: pass num_samples=len(dataset) or call set_dataset_size"
            )
        return self.store

    def _mirror_store(self) -> None:
        if self.store is not None:  # outside the step: a state load or an epoch's end
            seen = self.store.seen.cpu()
            self._seen_host = seen.clone() if seen is self.store.seen else seen  # never the store's own buffer

    def _host_indices(self, indices: object, batch: int) -> Tensor:
        """The batch's dataset indices, checked on the host: (B,) integers in [0, num_samples), on the CPU."""
        store = self._require_store()
        if not isinstance(indices, Tensor) or not is_integer_tensor(indices):
            raise TypeError(f"AmortisedRMix needs indices=, the batch's dataset indices as an integer tensor, got "
                            f"{describe(indices)}")  # fmt: skip
        if indices.device.type != "cpu":
            raise ValueError(f"indices must be a CPU tensor (the sampler's: they are read on the host), got one on "
                             f"{indices.device}")  # fmt: skip
        if tuple(indices.shape) != (batch,):
            raise ValueError(f"indices must have shape ({batch},), the batch size, got {tuple(indices.shape)}")
        n = store.num_samples
        if batch and (int(indices.min()) < 0 or int(indices.max()) >= n):  # host values: no device read
            raise ValueError(
                f"indices must lie in [0, {n - 1}] (the store's num_samples={n}), got values in "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        return indices.long()

    # -- the step -----------------------------------------------------------------------------------------
    def needs_grad_for(self, indices: Tensor | None = None) -> bool:
        """True unless every sample of ``indices`` has a stored map (a host read only)."""
        if indices is None:
            raise ValueError("AmortisedRMix.needs_grad_for needs the batch's dataset indices")
        idx = self._host_indices(indices, indices.shape[0] if isinstance(indices, Tensor) else -1)
        return not bool(self._seen_host[idx].all())

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        grad: Tensor | None = None,
        *,
        logits: Tensor | None = None,
        indices: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """As ``RMix``, with ``indices`` (B,): the batch's dataset indices on the CPU. ``grad`` may be None when
        every sample has a stored map (``needs_grad_for(indices)`` is False). The returned images require grad:
        call ``after_backward()`` after the backward of a loss computed from them."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a 4-D tensor (B, C, H, W), got {x!r:.80}")
        idx = self._host_indices(indices, x.shape[0])
        if grad is None and not bool(self._seen_host[idx].all()):
            unseen = idx[~self._seen_host[idx]]
            raise ValueError(
                f"AmortisedRMix needs grad for this batch: {unseen.numel()} of its samples (e.g. index "
                f"{int(unseen[0])}) have no stored saliency yet; pass rmix_fast.input_gradient(model, x, y)"
            )
        self._pending = None  # a mix no backward reached (an evaluation, a skipped step) stores nothing
        source = x.detach().requires_grad_(True) if torch.is_grad_enabled() else x
        targets = self.prepare_targets(source, y, grad, logits)
        if source.requires_grad:
            self._pending = (source, idx, to_device(idx, self._require_store().maps.device))
        if not self.draw_applied():
            self.last_params = MixParams(applied=False)
            return source, targets
        p = self.draw_params(source)
        if grad is not None:
            self._steps[0] += 1
            mixed, params = self.blend(source, grad, p)
        else:
            self._steps[1] += 1
            mixed, params = self._blend_stored(source, p)
        self.last_params = params
        return mixed, self.mix_targets(targets, params)

    def prepare_targets(self, x: Tensor, y: Tensor, grad: Tensor | None, logits: Tensor | None = None) -> Tensor:
        # RMix's check that a gradient was given does not apply: ``forward`` has checked that the store covers
        # a batch that comes without one
        return super().prepare_targets(x, y, x if grad is None else grad, logits)

    def _blend_stored(self, x: Tensor, p: RMixParams) -> tuple[Tensor, MixParams]:
        """``rmix_cells`` on the stored maps of the pending batch, pooled to the drawn grid."""
        cells, _ = self._require_store().lookup(self._pending[2])
        mixed, lam_eff, mask = rmix_cells(
            x, pool_cells(cells, p.grid), perm=p.perm, lam=p.lam, q=p.q, backend=self.backend, validate=False,
            return_mask=True,
        )  # fmt: skip
        return mixed, MixParams(True, p.perm, p.lam, lam_eff, grid=p.grid, q=p.q, mask=mask)

    def after_backward(self) -> None:
        """Stores each sample's map from the gradient the backward left on the un-mixed batch (every rank's, under
        ``torch.distributed``). A no-op when the last call stored nothing (no grad mode)."""
        if self._pending is None:
            return
        source, idx, idx_device = self._pending
        self._pending = None
        if source.grad is None:
            raise RuntimeError(
                "AmortisedRMix.after_backward: the batch has no gradient; call it after the backward of a loss "
                "computed from the mixed images"
            )
        store = self._require_store()
        grad = source.grad
        maps = cell_map_from_gradient(grad, store.grid)
        finite = torch.isfinite(grad).flatten(1).all(dim=1)
        maps = torch.where(finite[:, None, None], maps, store.lookup(idx_device)[0].to(maps.dtype))
        all_idx, all_maps = gather_updates(idx_device, maps.to(store.maps.dtype))
        store.update_(all_idx, all_maps)
        self._seen_host[idx] = True  # other ranks' samples join at end_epoch

    def end_epoch(self) -> None:
        self._mirror_store()

    def epoch_stats(self) -> dict[str, float]:
        """The share of the epoch's mixed batches that were mixed from the store (no saliency pass)."""
        fresh, stored = self._steps
        self._steps = [0, 0]
        return {"amortised_share": stored / (fresh + stored)} if fresh + stored else {}

    def extra_repr(self) -> str:
        n = self.store.num_samples if self.store is not None else None
        return f"{super().extra_repr()}, num_samples={n}, store_grid={self.store_grid}"
