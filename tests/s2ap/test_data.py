"""Datasets as tensors: splits, determinism, augmentation, folder and torchvision sources."""

from __future__ import annotations

import hashlib
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s2ap.data import (
    Augment,
    DatasetNotFoundError,
    DatasetSplits,
    LoaderSplit,
    TensorSplit,
    crop_rows,
    flip_rows,
    list_sources,
    load_dataset,
)

CIFAR_JPEG = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _hashes(x: torch.Tensor) -> list[str]:
    return [hashlib.sha1(row.contiguous().numpy().tobytes()).hexdigest() for row in x]


def _all_batches(split, batch_size: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*split.batches(batch_size, **kw), strict=True)
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits")


# --------------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_ranges_classes(digits: DatasetSplits) -> None:
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.test) == 359  # 20% carved once
    assert len(digits.val) == round(0.1 * (1797 - 359))
    for split in (digits.train, digits.val, digits.test):
        assert isinstance(split, TensorSplit)
        assert split.x.shape[1:] == (1, 8, 8)
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.min() >= 0 and split.x.max() <= 1
        assert set(split.y.tolist()) == set(range(10))
    assert digits.train.x.max() == 1.0  # values/16, not values/255
    assert len(digits.mean) == len(digits.std) == 1
    # Computed on the training split.
    assert digits.mean[0] == pytest.approx(digits.train.x.mean().item(), abs=1e-6)
    assert digits.std[0] == pytest.approx(digits.train.x.std(unbiased=False).item(), abs=1e-5)
    assert not digits.default_augment.enabled


def test_digits_splits_partition_the_dataset(digits: DatasetSplits) -> None:
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    full = torch.as_tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    parts = torch.cat([digits.train.x, digits.val.x, digits.test.x])
    part_labels = torch.cat([digits.train.y, digits.val.y, digits.test.y])
    # Same multiset of (image, label) pairs: every example is in exactly one split.
    key = lambda x, y: Counter(zip(_hashes(x), y.tolist(), strict=True))  # noqa: E731
    assert key(parts, part_labels) == key(full, torch.as_tensor(labels))


def test_split_stable_for_seed_and_test_fixed(digits: DatasetSplits) -> None:
    again = load_dataset("digits", split_seed=0)
    assert torch.equal(again.train.x, digits.train.x) and torch.equal(again.val.y, digits.val.y)
    other = load_dataset("digits", split_seed=1, val_size=200.0)  # a whole float is a count
    assert len(other.val) == 200
    assert not torch.equal(other.val.x[:144], digits.val.x)
    # The test split never depends on split_seed or val_size.
    assert torch.equal(other.test.x, digits.test.x) and torch.equal(other.test.y, digits.test.y)


def test_train_val_disjoint_by_content() -> None:
    data = load_dataset("synthetic", val_size=0.25, options={"n_train": 400, "n_test": 50})
    assert (len(data.train), len(data.val), len(data.test)) == (300, 100, 50)
    train, val, test = (set(_hashes(s.x)) for s in (data.train, data.val, data.test))
    assert len(train) == 300 and len(val) == 100  # noise makes every image unique
    assert not train & val and not train & test and not val & test


@pytest.mark.parametrize("val_size", [1.5, -0.1, 1797, True, "0.1"])
def test_bad_val_size(val_size) -> None:
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("digits", val_size=val_size)


def test_val_size_zero_gives_empty_val() -> None:
    data = load_dataset("synthetic", val_size=0, options={"n_train": 50, "n_test": 10})
    assert len(data.val) == 0 and len(data.train) == 50
    assert list(data.val.batches(8)) == []


def test_unknown_source_and_option() -> None:
    with pytest.raises(ValueError, match="available data sources") as err:
        load_dataset("mnist-but-wrong")
    for name in list_sources():
        assert name in str(err.value)
    with pytest.raises(ValueError, match="n_trian"):
        load_dataset("synthetic", options={"n_trian": 10})


def test_options_override_stats_and_augment() -> None:
    data = load_dataset(
        "synthetic",
        options={
            "n_train": 40,
            "n_test": 8,
            "mean": [0.1, 0.2, 0.3],
            "std": [1, 1, 1],
            "augment": {"crop_padding": 2},
        },
    )
    assert data.mean == (0.1, 0.2, 0.3) and data.std == (1.0, 1.0, 1.0)
    assert data.default_augment == Augment(crop_padding=2)
    with pytest.raises(ValueError, match="one per channel"):
        load_dataset("synthetic", options={"n_train": 8, "mean": [0.5], "std": [0.5]})
    with pytest.raises(ValueError, match=r"options\.augment"):
        load_dataset("synthetic", options={"n_train": 8, "augment": {"crop": 4}})


# --------------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_deterministic_and_shaped() -> None:
    opts = {"n_train": 60, "n_test": 20, "num_classes": 4, "channels": 1, "image_size": 12}
    a = load_dataset("synthetic", options=dict(opts))
    b = load_dataset("synthetic", options=dict(opts))
    c = load_dataset("synthetic", options={**opts, "seed": 1})
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)
    assert a.train.x.shape[1:] == (1, 12, 12) and a.train.x.dtype == torch.uint8
    assert (a.num_classes, a.in_channels, a.image_size) == (4, 1, 12)
    assert sorted(Counter(torch.cat([a.train.y, a.val.y, a.test.y]).tolist()).values()) == [20] * 4


def test_synthetic_is_learnable() -> None:
    data = load_dataset("synthetic", options={"n_train": 600, "n_test": 300})
    torch.manual_seed(0)
    model = torch.nn.Linear(3 * 32 * 32, data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    steps = 0
    while steps < 50:
        for x, y in data.train.batches(32, shuffle=True, generator=g):
            loss = torch.nn.functional.cross_entropy(model((x - 0.5).flatten(1)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if steps == 50:
                break
    x, y = next(data.test.batches(len(data.test)))
    with torch.no_grad():
        acc = (model((x - 0.5).flatten(1)).argmax(1) == y).float().mean().item()
    assert acc > 0.5  # chance is 0.1


# --------------------------------------------------------------------------------------------------
# batches and augmentation


@pytest.fixture(scope="module")
def small_split() -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (37, 3, 6, 6), generator=g, dtype=torch.uint8)
    return TensorSplit(x, torch.arange(37) % 5)


def test_unshuffled_batches_cover_split_in_order(small_split: TensorSplit) -> None:
    batches = list(small_split.batches(10))
    assert [len(y) for _, y in batches] == [10, 10, 10, 7]
    x, y = _all_batches(small_split, 10)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, small_split.x.float() / 255) and torch.equal(y, small_split.y)
    assert [len(y) for _, y in small_split.batches(10, drop_last=True)] == [10, 10, 10]
    with pytest.raises(ValueError, match="batch_size"):
        small_split.batches(0)


def test_float_batches_are_copies() -> None:
    split = TensorSplit(torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64))
    x, _ = next(split.batches(4))
    x.zero_()
    assert split.x.sum() > 0


def test_shuffle_same_generator_same_batches(small_split: TensorSplit) -> None:
    aug = Augment(crop_padding=2, flip=True)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return _all_batches(small_split, 8, shuffle=True, generator=g, augment=aug)

    x1, y1 = run(0)
    x2, y2 = run(0)
    _, y3 = run(1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(y1, y3)
    # A shuffle is a permutation of the split.
    _, y = _all_batches(small_split, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    assert sorted(y.tolist()) == sorted(small_split.y.tolist())
    assert not torch.equal(y, small_split.y)


def test_crop_rows() -> None:
    x = torch.rand(3, 2, 5, 5)
    p = 2
    centre = torch.full((3, 2), p)
    assert torch.equal(crop_rows(x, p, centre), x)
    out = crop_rows(x, p, torch.tensor([[0, 0], [p, p], [2 * p, 2 * p]]))
    assert out.shape == x.shape
    # Offset 0: shifted down-right, zeros where the padding came in.
    assert torch.equal(out[0, :, p:, p:], x[0, :, :-p, :-p])
    assert (out[0, :, :p, :] == 0).all() and (out[0, :, :, :p] == 0).all()
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2, :, :-p, :-p], x[2, :, p:, p:])
    reflect = crop_rows(x, p, torch.zeros(3, 2, dtype=torch.int64), padding_mode="reflect")
    assert reflect.shape == x.shape and torch.equal(reflect[:, :, p:, p:], x[:, :, :-p, :-p])
    assert torch.equal(reflect[:, :, 0, p:], x[:, :, p, :-p])  # row -p reflects row p


def test_random_crop_keeps_shape_and_varies() -> None:
    x = torch.rand(64, 3, 8, 8)
    p = 3
    out = Augment(crop_padding=p).apply(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # Every output row is the crop of its own input at some offset in [0, 2p]^2 ...
    offsets = [(i, j) for i in range(2 * p + 1) for j in range(2 * p + 1)]
    found = []
    for row, src in zip(out, x, strict=True):
        matches = [
            o for o in offsets if torch.equal(crop_rows(src[None], p, torch.tensor([o]))[0], row)
        ]
        assert matches, "a row is not a crop of its input"
        found.append(matches[0])
    # ... and the offsets are drawn per example.
    assert len(set(found)) > 15


def test_flip() -> None:
    x = torch.rand(64, 2, 4, 5)
    mask = torch.arange(64) % 3 == 0
    flipped = flip_rows(x, mask)
    assert torch.equal(flip_rows(flipped, mask), x)  # flip twice = identity
    assert torch.equal(flipped[mask], torch.flip(x[mask], dims=[3]))
    assert torch.equal(flipped[~mask], x[~mask])

    out = Augment(flip=True).apply(x, torch.Generator().manual_seed(0))
    is_flipped = torch.tensor(
        [torch.equal(o, torch.flip(r, dims=[2])) for o, r in zip(out, x, strict=True)]
    )
    is_same = torch.tensor([torch.equal(o, r) for o, r in zip(out, x, strict=True)])
    assert (is_flipped ^ is_same).all()  # each row is either flipped or untouched
    assert 10 < int(is_flipped.sum()) < 54  # about half
    again = Augment(flip=True).apply(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_augment_validation() -> None:
    with pytest.raises(ValueError, match="crop_padding"):
        Augment(crop_padding=-1)
    with pytest.raises(ValueError, match="padding_mode"):
        Augment(crop_padding=1, padding_mode="wrap")
    assert not Augment().enabled and Augment(flip=True).enabled


# --------------------------------------------------------------------------------------------------
# imagefolder


def _write_folder(root: Path, n_train: int = 6, n_test: int = 3, size: int = 10) -> None:
    colours = {"cat": (200, 30, 30), "ant": (20, 40, 220)}  # sorted order: ant=0, cat=1
    for split, n in (("train", n_train), ("test", n_test)):
        for name, colour in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = Image.new("RGB", (size, size), colour)
                img.putpixel((i % size, 0), (i * 20, 255, 0))  # make each image unique
                ext = "png" if i % 2 == 0 else "jpg"
                img.save(root / split / name / f"{i:03d}.{ext}", quality=95)


def test_imagefolder_from_tmp(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    data = load_dataset("imagefolder", root=tmp_path, val_size=2)
    assert data.classes == ("ant", "cat") and data.num_classes == 2
    assert (data.in_channels, data.image_size) == (3, 10)
    assert (len(data.train), len(data.val), len(data.test)) == (10, 2, 6)
    for split in (data.train, data.val, data.test):
        assert isinstance(split, TensorSplit) and split.x.dtype == torch.uint8
        # Colour identifies the class (JPEG is lossy, so compare the dominant channel).
        red = split.x[:, 0, 5, 5].int() > split.x[:, 2, 5, 5].int()
        assert torch.equal(red, split.y == 1)
    # PNGs decode exactly.
    with Image.open(tmp_path / "train" / "cat" / "000.png") as img:
        png = torch.from_numpy(np.array(img)).flatten(0, 1).long()  # [H*W, C]
    cats = torch.cat([data.train.x, data.val.x])[torch.cat([data.train.y, data.val.y]) == 1]
    flat = cats.flatten(2).transpose(1, 2)  # [N, H*W, C]
    assert any(torch.equal(f.long(), png) for f in flat)
    assert sorted(Counter(data.test.y.tolist()).values()) == [3, 3]


def test_imagefolder_bad_layout(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"root/train/<class>") as err:
        load_dataset("imagefolder", root=tmp_path)
    assert "cat" in str(err.value)  # says what it found
    with pytest.raises(ValueError, match=r"data\.root"):
        load_dataset("imagefolder")


def test_imagefolder_needs_equal_sizes(tmp_path: Path) -> None:
    _write_folder(tmp_path, n_train=2, n_test=1)
    Image.new("RGB", (12, 12)).save(tmp_path / "train" / "cat" / "999.png")
    with pytest.raises(ValueError, match="one size"):
        load_dataset("imagefolder", root=tmp_path, val_size=0)


def test_loader_split_matches_tensor_split(tmp_path: Path) -> None:
    _write_folder(tmp_path, n_train=9, n_test=4)
    mem = load_dataset("imagefolder", root=tmp_path, val_size=3)
    lazy = load_dataset(
        "imagefolder", root=tmp_path, val_size=3, in_memory=False, options={"num_workers": 1}
    )
    assert isinstance(lazy.train, LoaderSplit) and isinstance(lazy.test, LoaderSplit)
    assert lazy.mean == pytest.approx(mem.mean) and lazy.std == pytest.approx(mem.std)
    for a, b in ((mem.train, lazy.train), (mem.val, lazy.val), (mem.test, lazy.test)):
        assert len(a) == len(b)
        xa, ya = _all_batches(a, 4)
        xb, yb = _all_batches(b, 4)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Same generator state: same shuffled, augmented batches.
    aug = Augment(crop_padding=2, flip=True)
    xa, ya = _all_batches(
        mem.train, 5, shuffle=True, augment=aug, generator=torch.Generator().manual_seed(4)
    )
    xb, yb = _all_batches(
        lazy.train, 5, shuffle=True, augment=aug, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    sub = lazy.test.subset(3).materialize()
    assert torch.equal(sub.x, mem.test.x[:3]) and torch.equal(sub.y, mem.test.y[:3])


def test_imagefolder_cache_is_reused_and_keyed_by_the_files(tmp_path: Path) -> None:
    """The decoded folder is written once as plain .npy files and read back identically; a
    changed image gives a new cache file; ``cache: false`` writes none."""
    _write_folder(tmp_path, n_train=5, n_test=2)
    first = load_dataset("imagefolder", root=tmp_path, val_size=3)
    cache = tmp_path / ".s2ap-cache"
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 2  # train pool, test
    for f in files:  # plain arrays: loadable without pickle
        assert np.load(f, allow_pickle=False).dtype == np.uint8
    again = load_dataset("imagefolder", root=tmp_path, val_size=3)
    for a, b in ((first.train, again.train), (first.val, again.val), (first.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    nocache = load_dataset("imagefolder", root=tmp_path, val_size=3, options={"cache": False})
    assert torch.equal(nocache.train.x, first.train.x)
    # Rewrite one training image: the pool gets a new cache file, and the new pixels.
    path = tmp_path / "train" / "ant" / "000.png"
    Image.new("RGB", (10, 10), (0, 0, 0)).save(path)
    changed = load_dataset("imagefolder", root=tmp_path, val_size=3)
    assert len(list(cache.glob("*.npy"))) == 3
    black = torch.zeros(3, 10, 10, dtype=torch.uint8)
    pool = torch.cat([changed.train.x, changed.val.x])
    assert any(torch.equal(x, black) for x in pool)
    with pytest.raises(ValueError, match="cache"):
        load_dataset("imagefolder", root=tmp_path, options={"cache": "yes"})


def test_imagefolder_cifar_jpeg_sample(tmp_path: Path) -> None:
    if not CIFAR_JPEG.exists():
        pytest.skip(f"{CIFAR_JPEG} is absent (the shared CIFAR-10 JPEG archive)")
    per_class = {"train": 20, "test": 5}
    taken: Counter[tuple[str, str]] = Counter()
    with tarfile.open(CIFAR_JPEG, "r:gz") as tar:
        members = []
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and taken[parts[:2]] < per_class[parts[0]]:
                taken[parts[:2]] += 1
                members.append(member)
        tar.extractall(tmp_path, members=members, filter="data")
    assert len(members) == 250
    data = load_dataset("imagefolder", root=tmp_path, val_size=20)
    assert data.num_classes == 10 and "airplane" in data.classes and "truck" in data.classes
    assert (data.in_channels, data.image_size) == (3, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (180, 20, 50)
    assert data.default_augment == Augment(crop_padding=4, flip=True)
    # Real photos: statistics near CIFAR-10's (0.49, 0.48, 0.45).
    assert all(0.3 < m < 0.65 for m in data.mean) and all(0.15 < s < 0.35 for s in data.std)
    # Shuffled test order, so a budgeted evaluation sees several classes.
    assert len(set(data.test.subset(10).y.tolist())) >= 4
    x, y = next(data.train.batches(16, shuffle=True, augment=data.default_augment))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)


# --------------------------------------------------------------------------------------------------
# torchvision sources


@pytest.mark.parametrize("source", ["cifar10", "cifar100", "svhn"])
def test_torchvision_missing_files(tmp_path: Path, source: str) -> None:
    with pytest.raises(DatasetNotFoundError, match="download") as err:
        load_dataset(source, root=tmp_path, download=False)
    assert "data.root" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_dataset_to_device(digits: DatasetSplits) -> None:
    moved = digits.to("cpu")
    assert moved.train.device == torch.device("cpu")
    assert moved.mean == digits.mean and len(moved.test) == len(digits.test)
