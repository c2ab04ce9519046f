"""Splits: the train / validation / test parts of a dataset, and how batches come out of them.

A :class:`TensorSplit` is one ``[N, C, H, W]`` tensor (``uint8`` for 8-bit image sources, a
quarter of the memory of ``float32``) plus one label tensor, moved to the training device once;
batches are gathered by index there. A :class:`LoaderSplit` is a folder split too large to hold
in memory: the same ``batches(...)``, backed by a ``DataLoader`` that decodes a
:class:`FileList`. Both draw the batch order from the same permutation of the same generator and
augment after the batch reaches its device, so they yield the same batches for one folder.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeAlias

import torch
from torch import Tensor

from s2ap.data.augment import Augment

__all__ = [
    "DatasetSplits",
    "FileList",
    "LoaderSplit",
    "Split",
    "TensorSplit",
    "channel_stats",
]

# One raw batch: images (uint8 or float), labels, and whether the images are already a copy.
_RawBatch: TypeAlias = "tuple[Tensor, Tensor, bool]"


def _to_float(x: Tensor, *, copied: bool) -> Tensor:
    """uint8 -> float32 in [0, 1]; float input is copied unless it already is a fresh tensor."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x if copied else x.clone()


def _permutation(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A random permutation drawn on the generator's device, returned on ``device``."""
    rng_device = generator.device if generator is not None else device
    # non_blocking: a host-to-GPU copy from pageable memory is staged, with no stream sync.
    return torch.randperm(n, generator=generator, device=rng_device).to(device, non_blocking=True)


def _batch_ranges(n: int, batch_size: int, drop_last: bool) -> range:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = n - n % batch_size if drop_last else n
    return range(0, stop, batch_size)


class _Batches(ABC):
    """``batches(...)`` once for every split kind: order, float conversion, augmentation.

    A split supplies its length, the device its permutation is drawn on, and
    :meth:`_raw_batches`, which turns an order (``None``: as stored) into raw batches.
    """

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _order_device(self) -> torch.device: ...

    @abstractmethod
    def _raw_batches(
        self, order: Tensor | None, ranges: range, size: int
    ) -> Iterator[_RawBatch]: ...

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: Augment | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(images, labels)``: float32 images in ``[0, 1]`` and int64 labels, on the
        split's device.

        ``shuffle`` draws one permutation from ``generator`` (the global RNG of the split's device
        when None); ``augment`` is applied per batch with the same generator. The same generator
        state gives the same batches. Yielded tensors are fresh copies: callers may modify them.
        """
        ranges = _batch_ranges(len(self), batch_size, drop_last)  # validate before iterating
        return self._iter_batches(ranges, batch_size, shuffle, generator, augment)

    def _iter_batches(
        self,
        ranges: range,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
        augment: Augment | None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        # Drawn at the first batch, not at the call: the generator's draws stay in this order.
        order = _permutation(len(self), generator, self._order_device()) if shuffle else None
        for xb, yb, fresh in self._raw_batches(order, ranges, batch_size):
            xb = _to_float(xb, copied=fresh)
            if augment is not None:
                xb = augment.apply(xb, generator)
            yield xb, yb


@dataclass(eq=False)
class TensorSplit(_Batches):
    """One split held in memory (on ``x.device``): images ``x`` and labels ``y``."""

    x: Tensor
    """[N, C, H, W], ``uint8`` (8-bit sources) or ``float32`` in ``[0, 1]``."""
    y: Tensor
    """int64 [N]."""

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise ValueError(f"TensorSplit.x must be [N, C, H, W], got shape {tuple(self.x.shape)}")
        if self.x.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"TensorSplit.x must be uint8 or float32, got {self.x.dtype}")
        if self.y.ndim != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"TensorSplit.y must be [N] with N = {self.x.shape[0]}, got {tuple(self.y.shape)}"
            )
        if self.y.dtype != torch.int64:
            self.y = self.y.to(torch.int64)
        if self.y.device != self.x.device:
            raise ValueError(f"x is on {self.x.device} but y on {self.y.device}")

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        return (
            f"TensorSplit(n={len(self)}, shape={tuple(self.x.shape[1:])}, dtype={self.x.dtype}, "
            f"device={self.x.device})"
        )

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: str | torch.device) -> TensorSplit:
        """The same split on ``device`` (no copy if it is already there)."""
        return TensorSplit(self.x.to(device), self.y.to(device))

    def subset(self, n: int) -> TensorSplit:
        """The first ``n`` examples (all if fewer): a deterministic budget for evaluation."""
        return TensorSplit(self.x[:n], self.y[:n])

    def select(self, index: Tensor) -> TensorSplit:
        """The examples at ``index`` (a copy), in that order."""
        index = index.to(self.x.device)
        return TensorSplit(self.x[index], self.y[index])

    def _order_device(self) -> torch.device:
        return self.device

    def _raw_batches(self, order: Tensor | None, ranges: range, size: int) -> Iterator[_RawBatch]:
        for start in ranges:
            if order is None:  # slices are views: copy them
                yield self.x[start : start + size], self.y[start : start + size].clone(), False
            else:  # index gathers copy already
                idx = order[start : start + size]
                yield self.x[idx], self.y[idx], True


@dataclass(eq=False)
class FileList:
    """Image paths and labels of one split of a folder dataset, before decoding."""

    paths: list[str]
    labels: Tensor
    channels: int
    size: tuple[int, int]
    """(H, W) that every image must have."""

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, index: Tensor) -> FileList:
        """The files at ``index``, in that order."""
        idx = index.tolist()
        return FileList([self.paths[i] for i in idx], self.labels[idx], self.channels, self.size)

    def decode(self, i: int) -> Tensor:
        """Image ``i`` as a uint8 [C, H, W] tensor."""
        from PIL import Image

        with Image.open(self.paths[i]) as file:
            img = file.convert("L" if self.channels == 1 else "RGB")
            if (img.height, img.width) != self.size:
                raise ValueError(
                    f"image {self.paths[i]} is {img.width}x{img.height} but the dataset's images "
                    f"are {self.size[1]}x{self.size[0]}; in-memory datasets need images of one "
                    "size (resize the folder once, e.g. with PIL, before loading it)"
                )
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return data.view(self.size[0], self.size[1], self.channels).permute(2, 0, 1)

    def load(self, workers: int | None = None) -> TensorSplit:
        """Decode every file (PIL releases the GIL while decoding, so threads scale)."""
        x = torch.empty((len(self), self.channels, *self.size), dtype=torch.uint8)

        def fill(i: int) -> None:
            x[i] = self.decode(i)

        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fill, range(len(self))))
        return TensorSplit(x, self.labels.clone())


class _FileDataset(torch.utils.data.Dataset):
    """Decodes image files to uint8 [C, H, W] tensors; what a DataLoader's workers run."""

    def __init__(self, files: FileList) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.files.decode(i), self.files.labels[i]


@dataclass(eq=False)
class LoaderSplit(_Batches):
    """A split decoded from files on the fly, for folder datasets too large to hold in memory.

    Same ``batches(...)`` interface as :class:`TensorSplit`: the batch order comes from the same
    permutation of the same generator, and augmentation is applied the same way after the batch
    reaches ``device``. So for one folder and one generator state, both yield the same batches.
    """

    files: FileList
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    num_workers: int = 0

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (
            f"LoaderSplit(n={len(self)}, shape={(self.files.channels, *self.files.size)}, "
            f"device={self.device}, num_workers={self.num_workers})"
        )

    @property
    def y(self) -> Tensor:
        """All labels (known without decoding), on the CPU."""
        return self.files.labels

    def to(self, device: str | torch.device) -> LoaderSplit:
        """The same split, delivering its batches on ``device``."""
        return LoaderSplit(self.files, torch.device(device), self.num_workers)

    def subset(self, n: int) -> LoaderSplit:
        """The first ``n`` examples (all if fewer)."""
        return LoaderSplit(
            self.files.select(torch.arange(min(n, len(self)))), self.device, self.num_workers
        )

    def materialize(self) -> TensorSplit:
        """Decode the whole split into a :class:`TensorSplit` on ``device`` (e.g. after
        :meth:`subset`, for an attack that wants the evaluation set as one tensor)."""
        return self.files.load().to(self.device)

    def _order_device(self) -> torch.device:
        return torch.device("cpu")  # the DataLoader's sampler takes Python index lists

    def _raw_batches(self, order: Tensor | None, ranges: range, size: int) -> Iterator[_RawBatch]:
        order = torch.arange(len(self)) if order is None else order
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.files),
            batch_sampler=[order[s : s + size].tolist() for s in ranges],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for xb, yb in loader:
            yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True), True


Split: TypeAlias = "TensorSplit | LoaderSplit"


@dataclass(eq=False)
class DatasetSplits:
    """A dataset ready for training: train/val/test splits and what a model needs to know."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    """Per-channel mean of the training split in [0, 1] units (known constants for CIFAR/SVHN)."""
    std: tuple[float, ...]
    default_augment: Augment
    """The augmentation this dataset is usually trained with (none for digits/synthetic)."""
    classes: tuple[str, ...] = ()
    """Class names in label order, where the source has them."""

    def to(self, device: str | torch.device) -> DatasetSplits:
        """The same dataset with every split on ``device``."""
        return replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


def channel_stats(
    split: TensorSplit, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of a split's pixels, in [0, 1] units.

    Accumulates in float64 chunk by chunk, so 50,000 CIFAR images need no 1 GB temporary.
    """
    c = split.x.shape[1]
    total = torch.zeros(c, dtype=torch.float64, device=split.device)
    total_sq = torch.zeros_like(total)
    count = 0
    for start in range(0, len(split), chunk):
        xb = split.x[start : start + chunk].to(torch.float64)
        if split.x.dtype == torch.uint8:
            xb = xb / 255.0
        total += xb.sum(dim=(0, 2, 3))
        total_sq += xb.square().sum(dim=(0, 2, 3))
        count += xb.shape[0] * xb.shape[2] * xb.shape[3]
    if count == 0:
        raise ValueError("cannot compute channel statistics of an empty split")
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    # A constant channel would give std 0 and a division by zero in Normalize.
    std = var.sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())
