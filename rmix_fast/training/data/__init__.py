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
* ``boxes`` (N, 4) and ``masks`` (N, H, W) bool locate each image's object: shapes has the boxes always and the
  masks on request (``shapes_dataset(..., with_masks=True)``, for the label-evidence metric); None elsewhere.

Nothing is ever downloaded: CIFAR and imagefolder read the files already in ``data_dir``.
"""

from __future__ import annotations

import os

from rmix_fast.training.data import augment
from rmix_fast.training.data.base import InMemoryVisionDataset, VisionDataset
from rmix_fast.training.data.cifar import cifar_dataset
from rmix_fast.training.data.imagefolder import ImageFolderDataset
from rmix_fast.training.data.shapes import SHAPE_CLASSES, make_shapes, shapes_dataset

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
