"""ImageNet-style folders: ``<data_dir>/train/<class>/<image>`` and ``<data_dir>/val/<class>/<image>``.

Classes are the sub-folder names, sorted; images (``.jpg .jpeg .png .bmp .webp``, any case, searched
recursively inside each class folder) are decoded with PIL and converted to RGB. The train split augments
per sample (random resized crop + horizontal flip) with a generator seeded from ``(seed, epoch, index)``, so
the augmentation does not depend on the number of DataLoader workers or the order samples are fetched in;
the test split resizes the shorter side to ``image_size * 8 / 7`` and takes the centre crop.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from rmix_fast.training.data.augment import center_crop_resize, random_resized_crop
from rmix_fast.training.data.base import VisionDataset
from rmix_fast.training.seeding import mix_seed

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "ImageFolderDataset", "pil_to_tensor"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LAYOUT = "<data_dir>/{train,val}/<class>/*.{jpg,jpeg,png,bmp,webp}"


def pil_to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image (W, H) -> uint8 tensor (3, H, W) (no numpy needed)."""
    w, h = img.size
    data = bytearray(img.tobytes())  # writable buffer: torch.frombuffer warns on read-only bytes
    return torch.frombuffer(data, dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1).contiguous()


def _list_dir(path: Path, limit: int = 20) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f" ... ({len(names)} entries)" if len(names) > limit else ""
    return (", ".join(names[:limit]) + more) if names else "nothing"


def _image_files(folder: Path) -> list[str]:
    """Paths (str) of the images under folder, recursively, sorted. os.walk lists names without a stat call
    per file, which matters for ImageNet-sized trees."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        # Hidden files are skipped too: macOS "._x.jpg" resource forks are not images.
        found.extend(
            os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS) and f[0] != "."
        )
    return sorted(found)


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolderDataset(VisionDataset):
    """One split of an ImageNet-style folder tree, decoded lazily per sample.

    ``dataset[i]`` is ``(image (3, image_size, image_size) uint8, label, i)``. Attributes beyond
    :class:`VisionDataset`'s: ``root`` (the split folder), ``samples`` (list of (path str, label)), ``seed``.
    ``train_augment`` is ``"none"``: the train split already augments in ``__getitem__``.

    The train augmentation reads ``self.epoch``: call :meth:`set_epoch` before each epoch's DataLoader
    iteration. With ``persistent_workers=True`` the workers keep their own copy of the dataset and never see
    the new epoch (every epoch would repeat the same crops), so leave persistent_workers off.
    """

    def __init__(self, data_dir: str | os.PathLike, split: str, *, image_size: int = 224, seed: int = 0) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be an int >= 1, got {image_size!r}")
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"imagefolder expects {_LAYOUT}; data_dir not found: {data_dir}")
        if split == "train":
            root = data_dir / "train"
        else:  # test/ if the tree has one, else the usual val/
            root = data_dir / "test" if (data_dir / "test").is_dir() else data_dir / "val"
        if not root.is_dir():
            wanted = "train/" if split == "train" else "test/ or val/"
            raise FileNotFoundError(
                f"imagefolder expects {_LAYOUT}; no {wanted} folder in {data_dir} (it contains: {_list_dir(data_dir)})"
            )
        classes = _class_folders(root)
        if not classes:
            raise FileNotFoundError(
                f"imagefolder expects one sub-folder per class in {root} ({_LAYOUT}); found no folders "
                f"(it contains: {_list_dir(root)})"
            )
        if split == "test" and (data_dir / "train").is_dir():
            # The labels must mean the same in both splits, or the test accuracy silently measures nothing.
            train_classes = _class_folders(data_dir / "train")
            if train_classes != classes:
                only_train = sorted(set(train_classes) - set(classes))[:10]
                only_test = sorted(set(classes) - set(train_classes))[:10]
                raise ValueError(
                    f"imagefolder class folders differ between {data_dir / 'train'} and {root}: "
                    f"only in train: {only_train}, only in {root.name}: {only_test}"
                )
        samples: list[tuple[str, int]] = []
        counts: dict[str, int] = {}
        for label, cls in enumerate(classes):
            files = _image_files(root / cls)
            counts[cls] = len(files)
            samples.extend((f, label) for f in files)
        empty = [c for c, k in counts.items() if k == 0]
        if empty:
            found = ", ".join(f"{c}: {k}" for c, k in list(counts.items())[:20])
            raise FileNotFoundError(
                f"imagefolder: class folder(s) {empty[:10]} in {root} hold no {'/'.join(IMAGE_EXTENSIONS)} images "
                f"(images per class: {found}{' ...' if len(counts) > 20 else ''})"
            )
        super().__init__(
            name="imagefolder",
            split=split,
            classes=classes,
            image_size=(image_size, image_size),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            labels=torch.tensor([label for _, label in samples], dtype=torch.int64),
            train_augment="none",
        )
        self.root = root
        self.samples = samples
        self.seed = seed

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        i = self._check_index(i)
        path, label = self.samples[i]
        try:
            with Image.open(path) as f:
                img = f.convert("RGB")
        except OSError as e:
            raise OSError(f"imagefolder: cannot decode {path}: {e}") from e
        size = self.image_size
        if self.split == "train":
            # Seeded per (seed, epoch, index): the same sample gets the same crop whichever worker loads it.
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, i))
            img = random_resized_crop(img, size, g)
            if torch.rand((), generator=g) < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            img = center_crop_resize(img, size)
        return pil_to_tensor(img), label, i
