"""The dataset classes every loader returns: metadata plus ``(uint8 image (C, H, W), label, index)`` samples."""

from __future__ import annotations

import operator

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["InMemoryVisionDataset", "VisionDataset"]


class VisionDataset(Dataset):
    """Base class of all datasets here: metadata plus ``(uint8 image (C, H, W), label, index)`` samples.

    Attributes:
        name: dataset name (one of ``DATASET_NAMES``).
        split: ``"train"`` or ``"test"``.
        classes: class names; label ``k`` is ``classes[k]``.
        num_classes: ``len(classes)``.
        channels: C (3 for all datasets here).
        image_size: (H, W) of every returned image.
        mean, std: per-channel normalisation constants on the [0, 1] pixel scale (the caller normalises
            ``image / 255``).
        labels: (N,) int64.
        boxes: (N, 4) int64 rows ``[y0, y1, x0, x1)`` (half-open) of the object in each image, or None where
            the dataset has no such annotation (everything but shapes).
        masks: (N, H, W) bool per-pixel object masks, or None (everything but shapes built with
            ``with_masks=True``: kept only on request, since nothing in training reads them).
        train_augment: ``"crop_flip"`` (the caller applies ``augment.crop_flip`` to training batches) or
            ``"none"`` (the dataset augments per sample itself, or not at all).
        epoch: the last value given to :meth:`set_epoch` (0 initially).
    """

    def __init__(
        self,
        *,
        name: str,
        split: str,
        classes: list[str],
        image_size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        labels: Tensor,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
        train_augment: str,
        channels: int = 3,
    ) -> None:
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"labels must be a (N,) int64 tensor, got {labels.dtype} {tuple(labels.shape)}")
        if boxes is not None and (boxes.dtype != torch.int64 or tuple(boxes.shape) != (labels.numel(), 4)):
            raise ValueError(
                f"boxes must be (N, 4) int64 with N = {labels.numel()}, got {boxes.dtype} {tuple(boxes.shape)}"
            )
        if masks is not None and (
            masks.dtype != torch.bool or tuple(masks.shape) != (labels.numel(), *(int(s) for s in image_size))
        ):
            raise ValueError(
                f"masks must be (N, H, W) bool with N = {labels.numel()} and (H, W) = {tuple(image_size)}, "
                f"got {masks.dtype} {tuple(masks.shape)}"
            )
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} entries, got {mean} and {std}")
        self.name = name
        self.split = split
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.channels = channels
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.labels = labels
        self.boxes = boxes
        self.masks = masks
        self.train_augment = train_augment
        self.epoch = 0

    def __len__(self) -> int:
        return self.labels.numel()

    def set_epoch(self, epoch: int) -> None:
        """Store the epoch; datasets with per-sample random augmentation derive their draws from it."""
        self.epoch = operator.index(epoch)

    def _check_index(self, i: int) -> int:
        """Python-style index (negative counts from the end) -> the index in [0, N)."""
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} {self.split} of {n} samples")
        return i

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        raise NotImplementedError

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"classes={self.num_classes}, image_size={h}x{w}, train_augment={self.train_augment!r})"
        )


class InMemoryVisionDataset(VisionDataset):
    """A dataset held as one uint8 tensor ``images`` (N, C, H, W), so callers may batch by indexing it.

    ``dataset[i]`` is ``(images[i], int(labels[i]), i)``; ``images[i]`` is a view, not a copy.
    """

    def __init__(self, images: Tensor, labels: Tensor, **meta) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] != labels.numel():
            raise ValueError(f"{images.shape[0]} images but {labels.numel()} labels")
        super().__init__(labels=labels, channels=images.shape[1], image_size=tuple(images.shape[2:]), **meta)
        self.images = images

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        i = self._check_index(i)
        return self.images[i], int(self.labels[i]), i
