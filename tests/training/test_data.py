"""rmix_fast.training.data: the synthetic shapes dataset, CIFAR pickles, image folders, batch / PIL augmentations.

CIFAR and imagefolder run on tiny fake trees written to tmp_path (nothing is downloaded).
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from rmix_fast.training.data import (
    DATASET_NAMES,
    SHAPE_CLASSES,
    InMemoryVisionDataset,
    VisionDataset,
    augment,
    build_dataset,
    make_shapes,
)
from rmix_fast.training.data import shapes as shapes_mod
from rmix_fast.training.data.augment import center_crop_resize, crop_flip, random_resized_crop
from rmix_fast.training.seeding import mix_seed

# ----------------------------------------------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def shapes_small() -> InMemoryVisionDataset:
    return build_dataset("shapes", "train", size=1000, seed=0)


def test_dataset_names() -> None:
    assert DATASET_NAMES == ("shapes", "cifar10", "cifar100", "imagefolder")


def test_shapes_attributes(shapes_small: InMemoryVisionDataset) -> None:
    ds = shapes_small
    assert isinstance(ds, VisionDataset)
    assert ds.classes == list(SHAPE_CLASSES) and ds.num_classes == 10 and len(set(SHAPE_CLASSES)) == 10
    assert ds.channels == 3 and ds.image_size == (32, 32) and ds.train_augment == "crop_flip"
    assert len(ds.mean) == len(ds.std) == 3
    assert ds.images.shape == (1000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (1000,) and ds.labels.dtype == torch.int64
    assert ds.boxes is not None and ds.boxes.shape == (1000, 4) and ds.boxes.dtype == torch.int64
    assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) < 10
    image, label, index = ds[7]
    assert torch.equal(image, ds.images[7]) and label == int(ds.labels[7]) and index == 7
    assert isinstance(label, int) and isinstance(index, int)
    assert ds[-1][2] == 999
    with pytest.raises(IndexError):
        ds[1000]
    ds.set_epoch(3)
    assert ds.epoch == 3


def test_shapes_default_sizes() -> None:
    assert len(build_dataset("shapes", "test")) == 1000
    train = build_dataset("shapes", "train", image_size=16)  # smaller images keep the 5000 quick
    assert len(train) == 5000 and train.image_size == (16, 16)


def test_shapes_deterministic_and_seeded(shapes_small: InMemoryVisionDataset) -> None:
    again = build_dataset("shapes", "train", size=300, seed=0)  # also a prefix of the 1000 of the fixture
    assert torch.equal(again.images, shapes_small.images[:300])
    assert torch.equal(again.labels, shapes_small.labels[:300]) and torch.equal(again.boxes, shapes_small.boxes[:300])
    other_seed = build_dataset("shapes", "train", size=300, seed=1)
    test_split = build_dataset("shapes", "test", size=300, seed=0)
    for other in (other_seed, test_split):
        # Different streams: every image differs.
        same = (other.images == again.images).flatten(1).all(1)
        assert not same.any()
        assert not torch.equal(other.labels, again.labels)


def test_make_shapes_prefix_stable() -> None:
    # Fixed-size chunks, each from its own generator: a shorter run is a prefix of a longer one.
    x1, y1, b1 = make_shapes(700, seed=5)
    x2, y2, b2 = make_shapes(300, seed=5)
    assert torch.equal(x1[:300], x2) and torch.equal(y1[:300], y2) and torch.equal(b1[:300], b2)
    threads = torch.get_num_threads()
    x0, y0, b0 = make_shapes(0, seed=5)
    assert torch.get_num_threads() == threads  # generation runs on one thread, then restores the setting
    assert x0.shape == (0, 3, 32, 32) and y0.shape == (0,) and b0.shape == (0, 4)


@pytest.mark.parametrize("image_size", [32, 48])
def test_shapes_boxes(image_size: int) -> None:
    _, labels, boxes = make_shapes(1000, seed=1, image_size=image_size)
    y0, y1, x0, x1 = boxes.unbind(1)
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y1 <= image_size).all() and (x1 <= image_size).all()
    assert (y1 > y0).all() and (x1 > x0).all()
    fraction = ((y1 - y0) * (x1 - x0)).double() / image_size**2
    # Nominally 8.5-14 %; pixel sampling trims the tips of pointed shapes (triangle, diamond) a little.
    assert fraction.min() >= 0.055 and fraction.max() <= 0.17
    assert 0.10 <= fraction.mean() <= 0.125
    assert 0.07 <= fraction.quantile(0.02) and fraction.quantile(0.98) <= 0.15
    # Position is uniform-ish and independent of the class: box centres cover the image.
    cy = (y0 + y1).double() / 2
    assert cy.min() < image_size * 0.25 and cy.max() > image_size * 0.75
    # Box size does not depend on the class except through the shapes' outlines (within 25 %).
    per_class = torch.stack([fraction[labels == k].mean() for k in range(10)])
    assert per_class.max() / per_class.min() < 1.25


def test_shapes_object_is_inside_box() -> None:
    # Re-render a chunk from the same draws without the object: only pixels inside the box may change, and
    # the box is tight around those that do; the changed pixels are the object's mask (all but the few an
    # occluding line or the rounding to uint8 leaves as they were).
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    original = shapes_mod._shape_mask
    with shapes_mod._one_thread():
        images, _, boxes, masks = shapes_mod._render_chunk(64, 32, g1)
        try:
            shapes_mod._shape_mask = lambda k, u, v: torch.zeros(u.shape, dtype=torch.bool)
            background, _, _, empty = shapes_mod._render_chunk(64, 32, g2)
        finally:
            shapes_mod._shape_mask = original
    changed = (images != background).any(1)  # (m, S, S)
    assert not empty.any()
    assert not (changed & ~masks).any()
    assert (changed & masks).sum() >= 0.95 * masks.sum()
    for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        outside = changed[i].clone()
        outside[y0:y1, x0:x1] = False
        assert not outside.any(), f"image {i}: pixels outside the box {boxes[i].tolist()} depend on the object"
        inner = changed[i, y0:y1, x0:x1]
        assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()


def test_shape_masks_are_distinct() -> None:
    # On a fine grid, every class fills a comparable part of its box, touches all four sides, and differs from
    # every other class under all 8 flips / quarter turns the generator applies.
    t = torch.arange(-40, 41) / 40  # exact 0 and +-1 on the grid
    v, u = torch.meshgrid(t, t, indexing="ij")
    masks = [shapes_mod._shape_mask(k, u[None], v[None])[0] for k in range(10)]
    for k, mask in enumerate(masks):
        fill = mask.double().mean().item()
        assert 0.45 <= fill <= 0.85, (SHAPE_CLASSES[k], fill)
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any(), SHAPE_CLASSES[k]

    def variants(m: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for transpose, fu, fv in itertools.product((False, True), repeat=3):
            x = m.T if transpose else m
            x = x.flip(1) if fu else x
            out.append(x.flip(0) if fv else x)
        return out

    for a, b in itertools.combinations(range(10), 2):
        for vb in variants(masks[b]):
            iou = (masks[a] & vb).sum() / (masks[a] | vb).sum()
            assert iou < 0.8, (SHAPE_CLASSES[a], SHAPE_CLASSES[b], float(iou))


def test_shapes_labels_balanced(shapes_small: InMemoryVisionDataset) -> None:
    counts = torch.bincount(shapes_small.labels, minlength=10)
    assert counts.min() >= 85 and counts.max() <= 115, counts.tolist()


def test_shapes_mean_std_constants(shapes_small: InMemoryVisionDataset) -> None:
    x = shapes_small.images.double() / 255
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(shapes_small.mean, dtype=torch.float64), atol=0.01)
    assert torch.allclose(std, torch.tensor(shapes_small.std, dtype=torch.float64), atol=0.01)


def test_shapes_background_carries_no_label() -> None:
    # Global colour statistics (per-channel mean / std over the image) are the same for every class.
    x, labels, _ = make_shapes(1000, seed=2)
    stats = torch.cat([x.double().mean((2, 3)), x.double().std((2, 3))], 1) / 255  # (n, 6)
    overall = stats.mean(0)
    spread = stats.std(0) / (100**0.5)  # standard error of a class mean (~100 images per class)
    for k in range(10):
        assert ((stats[labels == k].mean(0) - overall).abs() < 5 * spread + 0.01).all(), SHAPE_CLASSES[k]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": -1, "seed": 0}, "n must"),
        ({"n": 2.5, "seed": 0}, "n must"),
        ({"n": 4, "seed": 0, "image_size": 8}, "image_size"),
        ({"n": 4, "seed": "a"}, "seed"),
    ],
)
def test_make_shapes_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_shapes(**kwargs)


# ------------------------------------------------------------------------------------------- build_dataset


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("mnist", "train"), {}, "name must be one of"),
        (("shapes", "val"), {}, "split must be one of"),
        (("shapes", "train"), {"size": 0}, "size must be"),
        (("shapes", "train"), {"size": True}, "size must be"),
        (("shapes", "train"), {"image_size": 8}, "image_size"),
        (("shapes", "train"), {"seed": 1.5}, "seed must be"),
        (("cifar10", "train"), {"data_dir": ".", "size": 10}, "size only applies"),
        (("cifar10", "train"), {"data_dir": ".", "image_size": 64}, "image_size must be None or 32"),
        (("cifar100", "train"), {}, "data_dir"),
        (("imagefolder", "train"), {}, "data_dir"),
    ],
)
def test_build_dataset_validation(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_dataset(*args, **kwargs)


def test_shapes_ignores_data_dir() -> None:
    ds = build_dataset("shapes", "test", data_dir="/does/not/exist", size=10)
    assert len(ds) == 10


# ------------------------------------------------------------------------------------------------- CIFAR


def _dump(path, obj, protocol: int = 2) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _fake_batch(rng: np.random.Generator, n: int, labels_key: bytes, num_classes: int) -> dict:
    return {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        labels_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [b"x.png"] * n,
    }


def _write_cifar10(root, n_per_batch: int = 4, protocol: int = 2) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _fake_batch(rng, n_per_batch, b"labels", 10)
        _dump(folder / name, batches[name], protocol)
    names = [f"class{k}".encode() for k in range(10)]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": n_per_batch}, protocol)
    return batches


def _write_cifar100(root, n: int = 6) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in ("train", "test"):
        batches[name] = _fake_batch(rng, n, b"fine_labels", 100)
        batches[name][b"coarse_labels"] = [0] * n
        _dump(folder / name, batches[name])
    meta = {b"fine_label_names": [f"fine{k}".encode() for k in range(100)], b"coarse_label_names": [b"c"] * 20}
    _dump(folder / "meta", meta)
    return batches


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_loads(tmp_path, protocol: int) -> None:
    batches = _write_cifar10(tmp_path, protocol=protocol)
    train = build_dataset("cifar10", "train", data_dir=tmp_path)
    test = build_dataset("cifar10", "test", data_dir=tmp_path, image_size=32)
    assert isinstance(train, InMemoryVisionDataset)
    assert len(train) == 20 and len(test) == 4
    assert train.classes == [f"class{k}" for k in range(10)] and train.num_classes == 10
    assert train.mean == (0.4914, 0.4822, 0.4465) and train.std == (0.2470, 0.2435, 0.2616)
    assert train.image_size == (32, 32) and train.channels == 3 and train.boxes is None
    assert train.train_augment == "crop_flip"
    train_data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    train_labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][b"labels"]]
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), train_data.reshape(20, 3, 32, 32))
    assert train.labels.tolist() == train_labels and train.labels.dtype == torch.int64
    assert np.array_equal(test.images.numpy(), batches["test_batch"][b"data"].reshape(4, 3, 32, 32))
    image, label, index = test[2]
    assert image.shape == (3, 32, 32) and label == batches["test_batch"][b"labels"][2] and index == 2


def test_cifar_numpy1_pickles(tmp_path) -> None:
    # The official files were written by numpy 1.x, whose arrays pickle as numpy.core.multiarray._reconstruct.
    batches = _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    old_style = path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old_style
    path.write_bytes(old_style)
    test = build_dataset("cifar10", "test", data_dir=tmp_path)
    assert np.array_equal(test.images.numpy(), batches["test_batch"][b"data"].reshape(4, 3, 32, 32))


def test_cifar10_folder_itself(tmp_path) -> None:
    _write_cifar10(tmp_path)
    a = build_dataset("cifar10", "test", data_dir=tmp_path)
    b = build_dataset("cifar10", "test", data_dir=tmp_path / "cifar-10-batches-py")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_cifar100_loads(tmp_path) -> None:
    batches = _write_cifar100(tmp_path)
    for data_dir in (tmp_path, tmp_path / "cifar-100-python"):
        train = build_dataset("cifar100", "train", data_dir=str(data_dir))
        assert len(train) == 6 and train.num_classes == 100 and train.classes[3] == "fine3"
        assert train.labels.tolist() == batches["train"][b"fine_labels"]
        assert np.array_equal(train.images.numpy(), batches["train"][b"data"].reshape(6, 3, 32, 32))
        assert train.mean == (0.5071, 0.4865, 0.4409) and train.std == (0.2673, 0.2564, 0.2762)
    test = build_dataset("cifar100", "test", data_dir=tmp_path)
    assert test.labels.tolist() == batches["test"][b"fine_labels"]


def test_cifar_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*data_dir not found"):
        build_dataset("cifar10", "train", data_dir=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"cifar100 expects <data_dir>/cifar-100-python/\{train,test,meta\}"):
        build_dataset("cifar100", "train", data_dir=tmp_path)  # exists, but empty
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        build_dataset("cifar10", "train", data_dir=tmp_path)
    assert len(build_dataset("cifar10", "test", data_dir=tmp_path)) == 4  # the test split does not need it


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda b: {**b, b"data": b[b"data"][:, :100]}, r"\(N, 3072\) uint8"),
        (lambda b: {**b, b"data": b[b"data"].astype(np.int32)}, r"\(N, 3072\) uint8"),
        (lambda b: {**b, b"labels": b[b"labels"][:-1]}, "4 images but"),
        (lambda b: {**b, b"labels": [10] * 4}, r"labels must lie in \[0, 10\)"),
        (lambda b: {b"data": b[b"data"]}, "expected a dict with keys"),
        (lambda b: [1, 2, 3], "expected a dict with keys"),
    ],
)
def test_cifar_malformed(tmp_path, corrupt, match: str) -> None:
    batches = _write_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", corrupt(batches["test_batch"]))
    with pytest.raises(ValueError, match=match) as info:
        build_dataset("cifar10", "test", data_dir=tmp_path)
    assert "test_batch" in str(info.value)


def test_cifar_not_a_pickle(tmp_path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="test_batch is not a CIFAR python pickle"):
        build_dataset("cifar10", "test", data_dir=tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "batches.meta", {b"label_names": [b"a", b"b"]})
    with pytest.raises(ValueError, match=r"batches.meta: expected b'label_names' with 10 class names"):
        build_dataset("cifar10", "test", data_dir=tmp_path)


class _Evil:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle ran code')",))


def test_cifar_refuses_code_in_pickles(tmp_path) -> None:
    batches = _write_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", {**batches["test_batch"], b"x": _Evil()})
    with pytest.raises(ValueError, match=r"refusing to load global .*exec"):
        build_dataset("cifar10", "test", data_dir=tmp_path)


# -------------------------------------------------------------------------------------------- imagefolder


def _png(path, size=(20, 14), colour=(200, 30, 60), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        # A horizontal ramp on top of the colour, so crops and flips change the pixels.
        img = Image.new("RGB", size, colour)
        for x in range(size[0]):
            for y in range(size[1]):
                img.putpixel((x, y), (colour[0], (x * 255) // max(size[0] - 1, 1), colour[2]))
    else:
        img = Image.new(mode, size, 128)
    img.save(path)


def _tree(root, splits=("train", "val"), classes=("dog", "cat", "bird"), per_class: int = 2) -> None:
    for split in splits:
        for k, cls in enumerate(classes):
            for j in range(per_class):
                _png(root / split / cls / f"img{j}.png", size=(16 + 7 * j + k, 12 + 5 * k))


def test_imagefolder_train(tmp_path) -> None:
    _tree(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "cat" / "._img0.png").write_bytes(b"macOS resource fork")  # hidden: skipped
    _png(tmp_path / "train" / "cat" / "sub" / "deep.PNG")  # recursive, any-case extension
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "train" / "dog" / "photo.JPG")
    ds = build_dataset("imagefolder", "train", data_dir=tmp_path, image_size=24, seed=3)
    assert ds.classes == ["bird", "cat", "dog"] and ds.num_classes == 3
    assert len(ds) == 2 + 3 + 3 and ds.labels.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.image_size == (24, 24) and ds.channels == 3 and ds.boxes is None and ds.train_augment == "none"
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
    assert not hasattr(ds, "images")
    for i in range(len(ds)):
        image, label, index = ds[i]
        assert image.shape == (3, 24, 24) and image.dtype == torch.uint8 and image.is_contiguous()
        assert label == int(ds.labels[i]) and index == i
    # Per-sample draws depend on (seed, epoch, index) only: access order and repetition do not matter.
    first = [ds[i][0] for i in range(len(ds))]
    assert all(torch.equal(ds[i][0], first[i]) for i in reversed(range(len(ds))))
    ds.set_epoch(1)
    later = [ds[i][0] for i in range(len(ds))]
    assert any(not torch.equal(a, b) for a, b in zip(first, later, strict=True))
    other_seed = build_dataset("imagefolder", "train", data_dir=tmp_path, image_size=24, seed=4)
    assert any(not torch.equal(other_seed[i][0], first[i]) for i in range(len(ds)))


def test_imagefolder_test_split(tmp_path) -> None:
    _tree(tmp_path)
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "val" / "cat" / "solid.bmp")
    _png(tmp_path / "val" / "dog" / "grey.png", mode="L")
    ds = build_dataset("imagefolder", "test", data_dir=tmp_path)  # no test/: reads val/
    assert ds.image_size == (224, 224) and len(ds) == 8 and ds.root.name == "val"
    solid = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("solid.bmp"))
    image, label, _ = ds[solid]
    assert ds.classes[label] == "cat"
    assert (image == torch.tensor([10, 200, 30], dtype=torch.uint8).view(3, 1, 1)).all()
    grey = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("grey.png"))
    assert (ds[grey][0] == 128).all()  # greyscale converted to RGB
    assert torch.equal(ds[0][0], ds[0][0])  # no randomness in the test split
    _tree(tmp_path, splits=("test",), per_class=1)
    assert build_dataset("imagefolder", "test", data_dir=tmp_path).root.name == "test"  # test/ wins if present


def test_imagefolder_works_with_dataloader(tmp_path) -> None:
    _tree(tmp_path)
    ds = build_dataset("imagefolder", "train", data_dir=tmp_path, image_size=8)
    images, labels, indices = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 8, 8) and labels.dtype == torch.int64 and indices.tolist() == [0, 1, 2, 3]


def test_imagefolder_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="data_dir not found"):
        build_dataset("imagefolder", "train", data_dir=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no train/ folder in .* \(it contains: nothing\)"):
        build_dataset("imagefolder", "train", data_dir=tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "readme.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match=r"one sub-folder per class .* found no folders .*readme.txt"):
        build_dataset("imagefolder", "train", data_dir=tmp_path)
    _tree(tmp_path, splits=("train",))
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "train" / "empty" / "x.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"\['empty'\] .* hold no .*images per class: bird: 2, cat: 2"):
        build_dataset("imagefolder", "train", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no test/ or val/ folder"):
        build_dataset("imagefolder", "test", data_dir=tmp_path)
    (tmp_path / "train" / "empty" / "x.txt").unlink()
    (tmp_path / "train" / "empty").rmdir()
    _tree(tmp_path, splits=("val",), classes=("dog", "cat", "fish"))
    with pytest.raises(ValueError, match=r"only in train: \['bird'\], only in val: \['fish'\]"):
        build_dataset("imagefolder", "test", data_dir=tmp_path)


def test_imagefolder_corrupt_image(tmp_path) -> None:
    _tree(tmp_path, per_class=1)
    bad = tmp_path / "train" / "bird" / "bad.png"
    bad.write_bytes(b"not a png")
    ds = build_dataset("imagefolder", "train", data_dir=tmp_path, image_size=8)
    i = next(k for k, (p, _) in enumerate(ds.samples) if p == str(bad))
    with pytest.raises(OSError, match=r"cannot decode .*bad\.png"):
        ds[i]


# --------------------------------------------------------------------------------------------- augment


def _crop_flip_loop(x: torch.Tensor, padding: int, seed: int) -> torch.Tensor:
    """Per-sample transcription of the documented draws: pad, crop at the offsets, then flip."""
    g = torch.Generator().manual_seed(seed)
    B, _, H, W = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (B, 2), generator=g)
    flips = torch.randint(0, 2, (B,), generator=g)
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    out = []
    for b in range(B):
        dy, dx = offsets[b].tolist()
        crop = padded[b, :, dy : dy + H, dx : dx + W]
        out.append(crop.flip(-1) if flips[b] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize(("shape", "padding"), [((16, 3, 8, 8), 4), ((7, 2, 5, 9), 2), ((5, 3, 6, 6), 0)])
def test_crop_flip_matches_loop(dtype: torch.dtype, shape: tuple, padding: int) -> None:
    x = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255).to(dtype) + 1  # no zeros in x
    before = x.clone()
    out = crop_flip(x, padding=padding, generator=torch.Generator().manual_seed(11))
    assert torch.equal(x, before)  # input untouched
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, _crop_flip_loop(x, padding, 11))


def test_crop_flip_statistics() -> None:
    x = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 8).expand(4000, 1, 8, 8).contiguous() + 1
    out = crop_flip(x, padding=4, generator=torch.Generator().manual_seed(0))
    zero_fraction = (out == 0).double().mean().item()
    # Offsets uniform in 0..8 per axis: expected zero (padding) fraction = 1 - (E[overlap]/8)^2, overlap 8 - |d - 4|.
    expected = 1 - (sum(8 - abs(d - 4) for d in range(9)) / 9 / 8) ** 2
    assert abs(zero_fraction - expected) < 0.01
    unshifted = out[(out != 0).all(dim=(1, 2, 3))]  # offset (4, 4): all pixels from the image
    flipped = (unshifted[:, 0, 0, 0] == 8).double().mean().item()
    assert len(unshifted) > 20 and 0.3 < flipped < 0.7


def test_crop_flip_memory_format_and_seed() -> None:
    x = torch.randint(0, 256, (6, 3, 10, 10), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    out = crop_flip(x, generator=torch.Generator().manual_seed(1))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, crop_flip(x.contiguous(), generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(out, crop_flip(x, generator=torch.Generator().manual_seed(2)))
    assert crop_flip(x[:0]).shape == (0, 3, 10, 10)
    view = x.contiguous()[:, :, 1:, ::2]  # non-contiguous input
    assert torch.equal(
        crop_flip(view, padding=0, generator=torch.Generator().manual_seed(3)), _crop_flip_loop(view, 0, 3)
    )
    torch.manual_seed(0)
    a = crop_flip(x)  # the global generator
    torch.manual_seed(0)
    assert torch.equal(a, crop_flip(x))


@pytest.mark.cuda
def test_crop_flip_same_on_cuda() -> None:
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    cpu = crop_flip(x, generator=torch.Generator().manual_seed(5))
    gpu = crop_flip(x.cuda(), generator=torch.Generator().manual_seed(5))
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)


def test_crop_flip_validation() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        crop_flip(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="padding"):
        crop_flip(torch.zeros(1, 3, 4, 4), padding=-1)


def _pixels(img: Image.Image) -> list[tuple[int, int, int]]:
    data = img.tobytes()
    return [tuple(data[i : i + 3]) for i in range(0, len(data), 3)]


def _position_image(w: int, h: int) -> Image.Image:
    """RGB image whose pixel (x, y) is (x, y, (7x + 3y) mod 256): the content tells where it came from."""
    data = bytes(v for y in range(h) for x in range(w) for v in (x % 256, y % 256, (x * 7 + y * 3) % 256))
    return Image.frombytes("RGB", (w, h), data)


def test_center_crop_resize() -> None:
    img = _position_image(90, 80)
    # Shorter side 80 -> 70 / (7 / 8) = 80: no scaling, so the result is the exact centre 70 x 70 crop.
    out = center_crop_resize(img, 70)
    assert out.size == (70, 70)
    expected = img.crop((10, 5, 80, 75))
    assert _pixels(out) == _pixels(expected)
    assert center_crop_resize(img, (12, 20)).size == (20, 12)  # (h, w) -> PIL (w, h)
    with pytest.raises(ValueError, match="size"):
        center_crop_resize(img, 0)


def test_random_resized_crop() -> None:
    img = _position_image(64, 48)
    a = random_resized_crop(img, 16, torch.Generator().manual_seed(0))
    b = random_resized_crop(img, 16, torch.Generator().manual_seed(0))
    c = random_resized_crop(img, (10, 12), torch.Generator().manual_seed(1))
    assert a.size == (16, 16) and c.size == (12, 10)
    assert _pixels(a) == _pixels(b)
    # An impossible scale forces the fallback: the largest centred crop with an allowed aspect ratio.
    wide = _position_image(100, 10)
    out = random_resized_crop(wide, (10, 13), torch.Generator().manual_seed(0), scale=(2.0, 3.0))
    assert _pixels(out) == _pixels(wide.crop((43, 0, 56, 10)))  # w = round(10 * 4 / 3) = 13
    square = _position_image(20, 20)
    out = random_resized_crop(square, 20, torch.Generator().manual_seed(0), scale=(2.0, 3.0))
    assert _pixels(out) == _pixels(square)


def test_random_resized_crop_covers_scale_range() -> None:
    # The crop's area fraction spans the scale range: measure it through a position-coded image.
    img = _position_image(200, 200)
    fractions = []
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        out = random_resized_crop(img, 32, g)
        xs = [p[0] for p in _pixels(out)]
        ys = [p[1] for p in _pixels(out)]
        fractions.append((max(xs) - min(xs) + 1) * (max(ys) - min(ys) + 1) / 200**2)
    assert min(fractions) < 0.15 and max(fractions) > 0.8


def test_mix_seed() -> None:
    assert mix_seed(0, 1) != mix_seed(1, 0) and mix_seed(0) != mix_seed(0, 0)
    assert mix_seed(1, 2, 3) == mix_seed(1, 2, 3) and 0 <= mix_seed(-5, 2**70) < 2**63
    assert len({mix_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}) == 450
    assert augment.crop_flip is crop_flip
