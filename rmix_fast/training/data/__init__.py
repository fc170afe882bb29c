"""Datasets for the training CLI: an embedded synthetic one (``shapes``), CIFAR-10/100 and ImageNet-style folders.

Everything goes through :func:`build_dataset`, which returns a :class:`VisionDataset`:

* ``dataset[i]`` is ``(image, label, i)`` with ``image`` a uint8 (C, H, W) tensor of the dataset's fixed
  ``image_size``; normalisation (``mean`` / ``std``, per channel on the [0, 1] scale) is left to the caller,
  so it can run on the GPU.
* ``train_augment`` says who augments training batches: ``"crop_flip"`` (shapes, CIFAR) means the caller
  applies :func:`rmix_fast.training.data.augment.crop_flip` to each batch; ``"none"`` (imagefolder) means the dataset
  already augments per sample (train split) and the caller does nothing.
* In-memory datasets (shapes, CIFAR) also have ``images`` (N, C, H, W) uint8, for batching by indexing
  without a DataLoader.

Nothing is ever downloaded: CIFAR and imagefolder read the files already in ``data_dir``.
"""

from __future__ import annotations

import operator
import os

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DATASET_NAMES",
    "SHAPE_CLASSES",
    "InMemoryVisionDataset",
    "VisionDataset",
    "augment",
    "build_dataset",
    "make_shapes",
]

DATASET_NAMES = ("shapes", "cifar10", "cifar100", "imagefolder")
SPLITS = ("train", "test")


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
        train_augment: str,
        channels: int = 3,
    ) -> None:
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"labels must be a (N,) int64 tensor, got {labels.dtype} {tuple(labels.shape)}")
        if boxes is not None and (boxes.dtype != torch.int64 or tuple(boxes.shape) != (labels.numel(), 4)):
            raise ValueError(
                f"boxes must be (N, 4) int64 with N = {labels.numel()}, got {boxes.dtype} {tuple(boxes.shape)}"
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


# The loaders subclass the classes above, so they are imported after them.
from rmix_fast.training.data import augment  # noqa: E402
from rmix_fast.training.data.cifar import cifar_dataset  # noqa: E402
from rmix_fast.training.data.imagefolder import ImageFolderDataset  # noqa: E402
from rmix_fast.training.data.shapes import SHAPE_CLASSES, make_shapes, shapes_dataset  # noqa: E402


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def build_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    size: int | None = None,
    seed: int = 0,
) -> VisionDataset:
    """Build one split of a dataset by name.

    Args:
        name: one of ``DATASET_NAMES``:

            * ``"shapes"``: generated in memory from ``seed`` (no files; ``data_dir`` is ignored); 10 classes.
            * ``"cifar10"`` / ``"cifar100"``: torchvision's python pickles, read from ``data_dir`` (the parent
              folder or the ``cifar-10-batches-py`` / ``cifar-100-python`` folder itself).
            * ``"imagefolder"``: ``<data_dir>/train/<class>/*.jpg`` and ``<data_dir>/val/<class>/...``.
        split: ``"train"`` or ``"test"`` (imagefolder: ``test`` reads ``test/`` if present, else ``val/``).
        data_dir: folder with the files (required for cifar10, cifar100 and imagefolder).
        image_size: output side. shapes: default 32 (>= 16); imagefolder: default 224; CIFAR: None or 32.
        size: number of samples, shapes only (default 5000 for train, 1000 for test); giving it for another
            dataset is a ValueError (their size is that of the files).
        seed: shapes: selects the generated images (train and test use different streams); imagefolder:
            seeds the per-sample training augmentation (with the epoch and the index); CIFAR: unused.

    Returns:
        A :class:`VisionDataset` (an :class:`InMemoryVisionDataset` for shapes and CIFAR).

    Raises:
        ValueError: bad ``name`` / ``split`` / ``size`` / ``image_size``, or malformed files.
        FileNotFoundError: ``data_dir`` or an expected file / folder is missing.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"name must be one of {DATASET_NAMES}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if name != "shapes" and size is not None:
        raise ValueError(f"size only applies to the shapes dataset (got size={size!r} for {name!r}); leave it None")
    if size is not None:
        _check_int(size, "size", 1)
    if image_size is not None:
        _check_int(image_size, "image_size", 1)

    if name == "shapes":
        return shapes_dataset(split, size=size, image_size=32 if image_size is None else image_size, seed=seed)
    if data_dir is None:
        raise ValueError(f"{name} reads files: pass data_dir (nothing is downloaded)")
    if name in ("cifar10", "cifar100"):
        if image_size not in (None, 32):
            raise ValueError(f"image_size must be None or 32 for {name} (its images are 32x32), got {image_size!r}")
        return cifar_dataset(name, split, data_dir)
    return ImageFolderDataset(data_dir, split, image_size=224 if image_size is None else image_size, seed=seed)
