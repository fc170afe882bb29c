"""CIFAR-10 / CIFAR-100 from torchvision's python-pickle folders (nothing is downloaded).

Layouts read (as unpacked from the official ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``)::

    cifar-10-batches-py/  data_batch_1 .. data_batch_5, test_batch, batches.meta (b"label_names")
    cifar-100-python/     train, test, meta (b"fine_label_names")

Each data file is a pickled dict with ``b"data"``: (N, 3072) uint8 (channel-major 3x32x32 rows) and
``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). Files are unpickled with a restricted unpickler
that only admits the numpy globals needed to rebuild arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from rmix_fast.training.data.base import InMemoryVisionDataset

__all__ = ["CIFAR_SPECS", "cifar_dataset", "find_cifar_root"]


@dataclass(frozen=True)
class _Spec:
    folder: str
    files: dict[str, tuple[str, ...]]  # split -> data files
    meta: str
    names_key: bytes
    labels_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def layout(self) -> str:
        files = [*self.files["train"], *self.files["test"], self.meta]
        if self.folder == "cifar-10-batches-py":
            files = ["data_batch_1..5", "test_batch", self.meta]
        return f"<data_dir>/{self.folder}/{{{','.join(files)}}}"


CIFAR_SPECS = {
    "cifar10": _Spec(
        folder="cifar-10-batches-py",
        files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        meta="batches.meta",
        names_key=b"label_names",
        labels_key=b"labels",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _Spec(
        folder="cifar-100-python",
        files={"train": ("train",), "test": ("test",)},
        meta="meta",
        names_key=b"fine_label_names",
        labels_key=b"fine_labels",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}

# Globals a pickled numpy array may reference (numpy 1.x spells the module numpy.core, 2.x numpy._core;
# protocol 5 pickles use _frombuffer; Python 3 writes bytes into protocol < 3 pickles with _codecs.encode).
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *(
        (mod, name)
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    ),
    *((mod, "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only numpy arrays are expected)")
        return super().find_class(module, name)


def _unpickle(path: Path) -> object:
    try:
        import numpy  # noqa: F401  (the pickles hold numpy arrays)
    except ImportError as e:
        raise ImportError(f"reading CIFAR pickles ({path}) needs numpy: pip install numpy") from e
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError, IndexError) as e:
        raise ValueError(f"{path} is not a CIFAR python pickle: {type(e).__name__}: {e}") from e


def find_cifar_root(name: str, data_dir: str | os.PathLike) -> Path:
    """The folder holding the pickles: ``data_dir/<cifar folder>`` if it exists, else ``data_dir`` itself if it
    holds the meta file; otherwise FileNotFoundError describing the expected layout."""
    spec = CIFAR_SPECS[name]
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"{name} expects {spec.layout()} (torchvision's format); data_dir not found: {data_dir}"
        )
    for root in (data_dir / spec.folder, data_dir):
        if (root / spec.meta).is_file():
            return root
    found = sorted(p.name for p in data_dir.iterdir())[:20]
    raise FileNotFoundError(
        f"{name} expects {spec.layout()} (torchvision's format; data_dir may also be the {spec.folder} folder "
        f"itself); not found: {data_dir / spec.folder / spec.meta} or {data_dir / spec.meta}. "
        f"{data_dir} contains: {found or 'nothing'}"
    )


def _read_batch(path: Path, spec: _Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """One data file -> (images (N, 3, 32, 32) uint8, labels (N,) int64), validated."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"missing CIFAR file {path} (expected layout: {spec.layout()})")
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or spec.labels_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a dict with keys b'data' and {spec.labels_key!r}, got {keys}")
    data, labels = batch[b"data"], batch[spec.labels_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' must be an (N, 3072) uint8 array, got {got}")
    try:
        labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {spec.labels_key!r} must be a list of ints: {e}") from e
    if labels_t.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but {spec.labels_key!r} has shape {tuple(labels_t.shape)}")
    if labels_t.numel() and not (0 <= int(labels_t.min()) and int(labels_t.max()) < spec.num_classes):
        raise ValueError(
            f"{path}: labels must lie in [0, {spec.num_classes}), got {int(labels_t.min())}..{int(labels_t.max())}"
        )
    if not data.flags.writeable:  # protocol-5 pickles may give read-only buffers, which torch warns about
        data = data.copy()
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)
    return images, labels_t


def _read_classes(path: Path, spec: _Spec) -> list[str]:
    meta = _unpickle(path)
    names = meta.get(spec.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list | tuple) or len(names) != spec.num_classes:
        raise ValueError(f"{path}: expected {spec.names_key!r} with {spec.num_classes} class names, got {names!r:.200}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def cifar_dataset(name: str, split: str, data_dir: str | os.PathLike) -> InMemoryVisionDataset:
    """Load one split of CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``) from ``data_dir``.

    Returns:
        :class:`InMemoryVisionDataset` with ``images`` (N, 3, 32, 32) uint8 (50000 train / 10000 test for the
        real data), ``labels`` (N,) int64, ``boxes`` None, ``train_augment="crop_flip"``.
    """
    if name not in CIFAR_SPECS:
        raise ValueError(f"name must be one of {tuple(CIFAR_SPECS)}, got {name!r}")
    spec = CIFAR_SPECS[name]
    if split not in spec.files:
        raise ValueError(f"split must be one of {tuple(spec.files)}, got {split!r}")
    root = find_cifar_root(name, data_dir)
    missing = [f for f in (*spec.files[split], spec.meta) if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{name} expects {spec.layout()} (torchvision's format); missing in {root}: {missing}")
    classes = _read_classes(root / spec.meta, spec)
    parts = [_read_batch(root / f, spec) for f in spec.files[split]]
    images = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return InMemoryVisionDataset(
        images,
        labels,
        name=name,
        split=split,
        classes=classes,
        mean=spec.mean,
        std=spec.std,
        train_augment="crop_flip",
    )
