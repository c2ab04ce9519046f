"""The ``imagefolder`` source: images in ``root/train/<class>/*`` and ``root/test/<class>/*``.

For datasets that come as folders of image files, e.g. an offline copy of CIFAR-10 exported as
PNG or JPEG. Splits are :class:`~s2ap.data.splits.FileList` objects: decoded into memory once, or
streamed through a DataLoader when ``data.in_memory`` is false.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from s2ap.data.augment import Augment
from s2ap.data.registry import DatasetNotFoundError, SourceData, pop_option, register_source
from s2ap.data.splits import FileList

__all__ = ["IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)

_LAYOUT = "root/train/<class>/<image> and root/test/<class>/<image>"
# PIL modes that load as one grey channel; anything else loads as RGB.
_GREY_MODES = ("1", "L", "I", "I;16", "F")


def _class_names(train_dir: Path, test_dir: Path) -> list[str]:
    """Class folder names of the training split, sorted (the label order)."""
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"no class folders in {train_dir}; expected {_LAYOUT}")
    if extra := sorted({p.name for p in test_dir.iterdir() if p.is_dir()} - set(classes)):
        raise ValueError(
            f"{test_dir} has class folders that {train_dir} lacks: {extra}; both splits need the "
            "same classes"
        )
    return classes


def _scan_split(split_dir: Path, classes: Sequence[str]) -> tuple[list[str], list[int]]:
    """Image paths under ``split_dir/<class>/`` (sorted per class) and their labels."""
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        files = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise DatasetNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}/<class>/; "
            f"expected {_LAYOUT}"
        )
    return paths, labels


def _probe(first: str, channels: int | None) -> tuple[tuple[int, int], int]:
    """(H, W) and channel count of the dataset, from its first training image."""
    from PIL import Image

    with Image.open(first) as img:
        size = (img.height, img.width)
        if channels is None:
            channels = 1 if img.mode in _GREY_MODES else 3
    if size[0] != size[1]:
        raise ValueError(
            f"imagefolder needs square images (models take one image_size); {first} "
            f"is {size[1]}x{size[0]}"
        )
    return size, channels


def _split_dirs(root: Path | None) -> tuple[Path, Path]:
    if root is None:
        raise ValueError(
            f"the imagefolder source needs `data.root`: a folder laid out as {_LAYOUT}"
        )
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir() or not test_dir.is_dir():
        found = (
            sorted(p.name for p in root.iterdir()) if root.is_dir() else "nothing (no such folder)"
        )
        raise DatasetNotFoundError(
            f"imagefolder expects {_LAYOUT} (class order = sorted class folder names); "
            f"`data.root` = {root} contains {found}"
        )
    return train_dir, test_dir


@register_source("imagefolder")
def imagefolder(*, root: Path | None, download: bool, options: dict[str, Any]) -> SourceData:
    """Images in ``root/train/<class>/*`` and ``root/test/<class>/*`` (class order: sorted names).

    All images must have the same size. Grey images load with one channel, anything else as RGB
    (the first training image decides; ``options.channels`` forces 1 or 3). The test split is put
    in a fixed random order (seed 0) so that ``test.subset(n)`` covers every class. Options:
    ``channels``, ``num_workers`` (DataLoader workers when ``in_memory`` is False; default 0).
    """
    train_dir, test_dir = _split_dirs(root)
    channels = pop_option(options, "channels", None)
    num_workers = pop_option(options, "num_workers", 0)
    if channels not in (None, 1, 3):
        raise ValueError(f"data.options.channels must be 1 or 3, got {channels}")
    classes = _class_names(train_dir, test_dir)
    (train_paths, train_labels), (test_paths, test_labels) = (
        _scan_split(split_dir, classes) for split_dir in (train_dir, test_dir)
    )
    size, channels = _probe(train_paths[0], channels)
    train = FileList(train_paths, torch.as_tensor(train_labels, dtype=torch.int64), channels, size)
    test = FileList(test_paths, torch.as_tensor(test_labels, dtype=torch.int64), channels, size)
    test_order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    return SourceData(
        train=train,
        test=test.select(test_order),
        num_classes=len(classes),
        # Natural-image default: crop with 1/8 of the size as padding (4 px at 32x32), flip.
        default_augment=Augment(crop_padding=max(1, math.ceil(size[0] / 8)), flip=True),
        classes=tuple(classes),
        num_workers=num_workers,
    )
