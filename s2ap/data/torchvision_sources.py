"""The torchvision datasets, one table row each, read by one generic loader.

A row says which ``torchvision.datasets`` class to build, how it names its split and its labels,
how its images are laid out, and what the dataset is usually trained with (channel constants,
augmentation). Each split is converted once into a uint8 ``[N, C, H, W]`` tensor. Adding a
dataset with the same shape of API is one more row (or :func:`register_torchvision_source`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from s2ap.data.augment import Augment
from s2ap.data.registry import DatasetNotFoundError, SourceData, default_root, register_source
from s2ap.data.splits import TensorSplit

__all__ = ["TORCHVISION_SOURCES", "TorchvisionSource", "register_torchvision_source"]


@dataclass(frozen=True)
class TorchvisionSource:
    """How to read one torchvision dataset into tensors, and how it is usually trained."""

    name: str
    """The source name in ``data.source``."""
    dataset_class: str
    """The class in ``torchvision.datasets`` (``"CIFAR10"``)."""
    num_classes: int
    mean: tuple[float, ...]
    """Standard per-channel constants of the training set, so results match published models."""
    std: tuple[float, ...]
    default_augment: Augment
    split_argument: Literal["train", "split"] = "train"
    """``train=True/False`` (CIFAR) or ``split="train"/"test"`` (SVHN)."""
    labels_attribute: str = "targets"
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    """How the dataset's ``.data`` array stores the images."""
    classes: tuple[str, ...] | None = None
    """Class names in label order; None reads the dataset's ``.classes``."""
    summary: str = ""
    train_size: int | None = None
    """Images in the training split (the pool the validation split is carved from), so a
    launch can check the split before loading anything (:mod:`s2ap.data.checks`)."""

    def split_kwargs(self, train: bool) -> dict[str, Any]:
        """The constructor argument that selects the training or the test split."""
        if self.split_argument == "split":
            return {"split": "train" if train else "test"}
        return {"train": train}


def _read_split(spec: TorchvisionSource, root: str, train: bool, download: bool) -> Any:
    """The torchvision dataset object of one split; missing files name the fix."""
    import torchvision

    cls = getattr(torchvision.datasets, spec.dataset_class)
    try:
        return cls(root, download=download, **spec.split_kwargs(train))
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        if download:
            raise
        raise DatasetNotFoundError(
            f"{spec.name} is not in {root} (or its files fail the checksum): set "
            "`data.download: true` to fetch it there, or point `data.root` at a folder "
            f"that holds it ({err})"
        ) from err


def _to_split(spec: TorchvisionSource, dataset: Any) -> TensorSplit:
    images = torch.from_numpy(np.asarray(dataset.data))
    if spec.layout == "NHWC":
        images = images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(getattr(dataset, spec.labels_attribute), dtype=torch.int64)
    return TensorSplit(images.contiguous(), labels)


def load_torchvision_source(
    spec: TorchvisionSource, *, root: Path | None, download: bool, options: dict[str, Any]
) -> SourceData:
    """Load ``spec``'s train and test splits through torchvision (the generic source)."""
    root_str = str(root if root is not None else default_root())
    train, test = (_read_split(spec, root_str, flag, download) for flag in (True, False))
    return SourceData(
        train=_to_split(spec, train),
        test=_to_split(spec, test),
        num_classes=spec.num_classes,
        default_augment=spec.default_augment,
        mean=spec.mean,
        std=spec.std,
        classes=spec.classes if spec.classes is not None else tuple(train.classes),
    )


def register_torchvision_source(spec: TorchvisionSource) -> None:
    """Make ``spec`` loadable as ``load_dataset(spec.name)`` / ``data.source: <name>``."""
    loader = partial(load_torchvision_source, spec)
    loader.__doc__ = spec.summary or f"{spec.dataset_class} through torchvision."
    register_source(spec.name)(loader)


_CROP_FLIP = Augment(crop_padding=4, flip=True)

TORCHVISION_SOURCES: tuple[TorchvisionSource, ...] = (
    TorchvisionSource(
        name="cifar10",
        dataset_class="CIFAR10",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        default_augment=_CROP_FLIP,
        summary="CIFAR-10 (50,000 train / 10,000 test, 32x32 RGB).",
        train_size=50_000,
    ),
    TorchvisionSource(
        name="cifar100",
        dataset_class="CIFAR100",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        default_augment=_CROP_FLIP,
        summary="CIFAR-100 (50,000 train / 10,000 test, 32x32 RGB, 100 classes).",
        train_size=50_000,
    ),
    TorchvisionSource(
        name="svhn",
        dataset_class="SVHN",
        num_classes=10,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        # No flips: digits are not mirror-symmetric.
        default_augment=Augment(crop_padding=2, flip=False),
        split_argument="split",
        labels_attribute="labels",  # 0-9: torchvision maps the original '10' to 0
        layout="NCHW",
        classes=tuple(str(i) for i in range(10)),
        summary="SVHN (73,257 train / 26,032 test, 32x32 RGB); no flips.",
        train_size=73_257,
    ),
)

for _spec in TORCHVISION_SOURCES:
    register_torchvision_source(_spec)
