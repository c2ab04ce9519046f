"""Datasets held as tensors on the training device.

Adversarial training runs ~11 forward/backward passes per batch, so the input pipeline must cost
next to nothing: a split is one ``[N, C, H, W]`` tensor (``uint8`` for 8-bit image sources, a
quarter of the memory of ``float32``) plus one label tensor, moved to the GPU once. Batches are
gathered by index and augmented there, vectorised over the batch; no worker processes, no
per-example Python.

Sources (``digits``, ``synthetic``, ``cifar10``, ``cifar100``, ``svhn``, ``imagefolder``) sit in a
registry and :func:`load_dataset` turns any of them into a :class:`DatasetSplits` with a
validation split carved from the training set by a fixed permutation of ``split_seed``. Model
selection uses that validation split, never the test split.

Large folder datasets that do not fit in memory load as a :class:`LoaderSplit`: the same
``batches(...)`` interface, backed by a ``torch.utils.data.DataLoader`` that decodes files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Augment",
    "DatasetNotFoundError",
    "DatasetSplits",
    "LoaderSplit",
    "Split",
    "TensorSplit",
    "channel_stats",
    "crop_rows",
    "flip_rows",
    "list_sources",
    "load_dataset",
    "register_source",
]

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


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where the configuration says; the message says how to fix it."""


# --------------------------------------------------------------------------------------------------
# Augmentation: vectorised over the batch, on the batch's device.


def crop_rows(x: Tensor, padding: int, offsets: Tensor, padding_mode: str = "constant") -> Tensor:
    """Crop every image of ``x`` ([B,C,H,W]) after padding by ``padding`` pixels on each side.

    ``offsets`` ([B, 2], integers in ``[0, 2 * padding]``) give each image's top-left corner in the
    padded image; an offset of ``(padding, padding)`` returns the image unchanged. The output keeps
    the input's shape. ``padding_mode`` is ``"constant"`` (zeros) or ``"reflect"``.
    """
    b, _, h, w = x.shape
    if padding == 0:
        return x
    padded = F.pad(x, (padding, padding, padding, padding), mode=padding_mode)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    # Advanced indices around a slice put the indexed dims first: [B, H, W, C].
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def flip_rows(x: Tensor, mask: Tensor) -> Tensor:
    """Flip horizontally the images of ``x`` ([B,C,H,W]) whose ``mask`` ([B] bool) entry is set."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


@dataclass(frozen=True)
class Augment:
    """Standard light augmentation for adversarial training: random crop and horizontal flip.

    Applied on the device to a whole float batch at once; random numbers come from the
    ``generator`` handed to :meth:`apply` (on its own device, so a CPU generator gives the same
    augmentation whether the data lives on the CPU or a GPU).
    """

    crop_padding: int = 0
    """Pad by this many pixels on each side, then crop back at a random offset per example."""
    flip: bool = False
    """Flip each example horizontally with probability 1/2."""
    padding_mode: str = "constant"
    """``"constant"`` (zero padding, as torchvision's RandomCrop) or ``"reflect"``."""

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"augment.crop_padding must be >= 0, got {self.crop_padding}")
        if self.padding_mode not in ("constant", "reflect"):
            raise ValueError(
                f"augment.padding_mode must be 'constant' or 'reflect', got {self.padding_mode!r}"
            )

    @property
    def enabled(self) -> bool:
        """Whether applying it changes anything."""
        return self.crop_padding > 0 or self.flip

    def apply(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Return an augmented copy of the float batch ``x`` ([B,C,H,W]) on ``x``'s device."""
        if not self.enabled or x.shape[0] == 0:
            return x
        b = x.shape[0]
        rng_device = generator.device if generator is not None else x.device
        if self.crop_padding > 0:
            offsets = torch.randint(
                0, 2 * self.crop_padding + 1, (b, 2), generator=generator, device=rng_device
            )
            x = crop_rows(
                x, self.crop_padding, offsets.to(x.device, non_blocking=True), self.padding_mode
            )
        if self.flip:
            mask = torch.rand(b, generator=generator, device=rng_device) < 0.5
            x = flip_rows(x, mask.to(x.device, non_blocking=True))
        return x


# --------------------------------------------------------------------------------------------------
# Splits


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


@dataclass(eq=False)
class TensorSplit:
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

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: Augment | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(images, labels)``: float32 images in ``[0, 1]`` and int64 labels, on the split's
        device.

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
        order = _permutation(len(self), generator, self.device) if shuffle else None
        for start in ranges:
            if order is None:
                xb = _to_float(self.x[start : start + batch_size], copied=False)
                yb = self.y[start : start + batch_size].clone()
            else:
                idx = order[start : start + batch_size]
                xb = _to_float(self.x[idx], copied=True)
                yb = self.y[idx]
            if augment is not None:
                xb = augment.apply(xb, generator)
            yield xb, yb


class _FileDataset(torch.utils.data.Dataset):
    """Decodes image files to uint8 [C, H, W] tensors; what a DataLoader's workers run."""

    def __init__(self, files: _FileList) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.files.decode(i), self.files.labels[i]


@dataclass(eq=False)
class _FileList:
    """Image paths and labels of one split of a folder dataset, before decoding."""

    paths: list[str]
    labels: Tensor
    channels: int
    size: tuple[int, int]  # (H, W) every image must have

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, index: Tensor) -> _FileList:
        idx = index.tolist()
        return _FileList([self.paths[i] for i in idx], self.labels[idx], self.channels, self.size)

    def decode(self, i: int) -> Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            img = img.convert("L" if self.channels == 1 else "RGB")
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


@dataclass(eq=False)
class LoaderSplit:
    """A split decoded from files on the fly, for folder datasets too large to hold in memory.

    Same ``batches(...)`` interface as :class:`TensorSplit`: the batch order comes from the same
    permutation of the same generator, and augmentation is applied the same way after the batch
    reaches ``device``. So for one folder and one generator state, both yield the same batches.
    """

    files: _FileList
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

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: Augment | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(images, labels)`` on ``device``, as :meth:`TensorSplit.batches` does."""
        ranges = _batch_ranges(len(self), batch_size, drop_last)
        return self._iter_batches(ranges, batch_size, shuffle, generator, augment)

    def _iter_batches(
        self,
        ranges: range,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
        augment: Augment | None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self)
        order = _permutation(n, generator, torch.device("cpu")) if shuffle else torch.arange(n)
        index_batches = [order[s : s + batch_size].tolist() for s in ranges]
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.files),
            batch_sampler=index_batches,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for xb, yb in loader:
            xb = _to_float(xb.to(self.device, non_blocking=True), copied=True)
            yb = yb.to(self.device, non_blocking=True)
            if augment is not None:
                xb = augment.apply(xb, generator)
            yield xb, yb


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
        return DatasetSplits(
            name=self.name,
            train=self.train.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            image_size=self.image_size,
            mean=self.mean,
            std=self.std,
            default_augment=self.default_augment,
            classes=self.classes,
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


# --------------------------------------------------------------------------------------------------
# Source registry


@dataclass
class SourceData:
    """What a source hands to :func:`load_dataset`: a training pool (the validation split is carved
    from it later), a fixed test split, and the dataset's metadata."""

    train: TensorSplit | _FileList
    test: TensorSplit | _FileList
    num_classes: int
    default_augment: Augment
    mean: tuple[float, ...] | None = None  # None: computed on the training split
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] = ()
    num_workers: int = 0  # DataLoader workers, for file lists loaded with in_memory=False


SourceFn = Callable[..., SourceData]
_SOURCES: dict[str, SourceFn] = {}


def register_source(name: str) -> Callable[[SourceFn], SourceFn]:
    """Decorator that adds a dataset source under ``name``.

    A source is called as ``fn(root=Path | None, download=bool, options=dict)`` and returns a
    :class:`SourceData`. It removes the keys it understands from ``options``; whatever is left
    is reported to the user as unknown.
    """

    def decorator(fn: SourceFn) -> SourceFn:
        if name in _SOURCES:
            raise ValueError(f"data source {name!r} is already registered")
        _SOURCES[name] = fn
        return fn

    return decorator


def list_sources() -> list[str]:
    """Names of all registered dataset sources, sorted."""
    return sorted(_SOURCES)


def _val_count(val_size: float | int, n: int) -> int:
    """Number of validation examples: a fraction in [0, 1) of ``n``, or a whole count >= 1.

    Whole floats count as counts (``200.0`` is 200 examples): config layers often parse numbers
    as floats.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, int | float):
        raise ValueError(f"data.val_size must be a fraction or a count, got {val_size!r}")
    if 0 <= val_size < 1:
        count = round(val_size * n)
    elif float(val_size).is_integer():
        count = int(val_size)
    else:
        raise ValueError(
            f"data.val_size must be a fraction in [0, 1) or a whole count, got {val_size}"
        )
    if not 0 <= count < n:
        raise ValueError(
            f"data.val_size={val_size} must leave training data: the training pool has {n} examples"
        )
    return count


def _default_root() -> Path:
    return Path(os.environ.get("S2AP_DATA", "~/.cache/s2ap/data")).expanduser().resolve()


def load_dataset(
    source: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: float | int = 0.1,
    split_seed: int = 0,
    device: str | torch.device = "cpu",
    in_memory: bool = True,
    options: dict[str, Any] | None = None,
) -> DatasetSplits:
    """Load ``source`` and split it into train / validation / test on ``device``.

    - ``root``: where the files are (torchvision sources default to ``$S2AP_DATA`` or
      ``~/.cache/s2ap/data``; ``imagefolder`` requires it). ``download`` lets torchvision fetch
      them.
    - ``val_size``: a fraction in [0, 1) or an absolute count of training examples held out for
      validation, chosen by a fixed permutation of ``split_seed``. The test split never depends on
      ``split_seed``.
    - ``in_memory``: only folder sources stream (as a :class:`LoaderSplit`) when False; the other
      sources are materialised by their loaders anyway and always come as :class:`TensorSplit`.
    - ``options``: source-specific settings (e.g. ``n_train`` for ``synthetic``, ``num_workers`` for
      a streamed ``imagefolder``), plus for every source ``mean``/``std`` (override the
      normalisation constants) and ``augment`` (a dict of :class:`Augment` fields replacing the
      dataset's default augmentation).
    """
    if source not in _SOURCES:
        raise ValueError(
            f"unknown data source {source!r}; available sources: {', '.join(list_sources())}"
        )
    opts = dict(options or {})
    mean_override = opts.pop("mean", None)
    std_override = opts.pop("std", None)
    augment_override = opts.pop("augment", None)
    root_path = Path(root).expanduser().resolve() if root is not None else None
    data = _SOURCES[source](root=root_path, download=download, options=opts)
    if opts:
        raise ValueError(f"unknown data.options for source {source!r}: {', '.join(sorted(opts))}")

    n = len(data.train)
    n_val = _val_count(val_size, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    train, val, test = data.train.select(perm[n_val:]), data.train.select(perm[:n_val]), data.test

    splits: list[Split] = []
    for part in (train, val, test):
        if isinstance(part, _FileList):
            splits.append(
                part.load() if in_memory else LoaderSplit(part, num_workers=data.num_workers)
            )
        else:
            splits.append(part)
    train_s, val_s, test_s = splits

    if mean_override is not None or std_override is not None:
        if mean_override is None or std_override is None:
            raise ValueError("data.options needs both mean and std to override the normalisation")
        mean, std = tuple(map(float, mean_override)), tuple(map(float, std_override))
    elif data.mean is not None and data.std is not None:
        mean, std = data.mean, data.std
    else:
        stats_split = (
            train_s if isinstance(train_s, TensorSplit) else train_s.subset(5000).materialize()
        )
        mean, std = channel_stats(stats_split)

    # The training split is never empty (the validation count leaves at least one example).
    if isinstance(train_s, TensorSplit):
        shape = tuple(train_s.x.shape[1:])
    else:
        shape = (train_s.files.channels, *train_s.files.size)
    in_channels, height, width = (int(v) for v in shape)
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(
            f"data.options mean/std need {in_channels} values (one per channel), got "
            f"mean={list(mean)}, std={list(std)}"
        )
    default_augment = data.default_augment
    if augment_override is not None:
        try:
            default_augment = Augment(**augment_override)
        except TypeError as err:
            raise ValueError(
                "data.options.augment takes crop_padding, flip and padding_mode, got "
                f"{augment_override!r}"
            ) from err
    result = DatasetSplits(
        name=source,
        train=train_s,
        val=val_s,
        test=test_s,
        num_classes=data.num_classes,
        in_channels=in_channels,
        image_size=max(height, width),
        mean=mean,
        std=std,
        default_augment=default_augment,
        classes=data.classes,
    )
    return result.to(device)


def _take(options: dict[str, Any], key: str, default: Any, kind: Callable[[Any], Any] = int) -> Any:
    return kind(options.pop(key)) if key in options else default


# --------------------------------------------------------------------------------------------------
# Sources


@register_source("digits")
def _digits(*, root: Path | None, download: bool, options: dict[str, Any]) -> SourceData:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): no download needed.

    It has no official test split; 20% is carved with a fixed permutation (seed 0), independent of
    ``split_seed``, so the test set is the same for every study.
    """
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(labels, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = round(0.2 * len(y))
    full = TensorSplit(x, y)
    return SourceData(
        train=full.select(perm[n_test:]),
        test=full.select(perm[:n_test]),
        num_classes=10,
        default_augment=Augment(),
        classes=tuple(str(i) for i in range(10)),
    )


@register_source("synthetic")
def _synthetic(*, root: Path | None, download: bool, options: dict[str, Any]) -> SourceData:
    """Random class-dependent spatial patterns plus pixel noise; deterministic for a given seed.

    Each class has a smooth prototype (a random 4x4 map per channel, upsampled bilinearly); an
    example is its class prototype at a random contrast, plus Gaussian noise, stored as uint8.
    Options: ``n_train`` (1000), ``n_test`` (200), ``num_classes`` (10), ``channels`` (3),
    ``image_size`` (32), ``seed`` (0), ``noise`` (0.2, the noise std in [0, 1] units).
    """
    n_train = _take(options, "n_train", 1000)
    n_test = _take(options, "n_test", 200)
    num_classes = _take(options, "num_classes", 10)
    channels = _take(options, "channels", 3)
    size = _take(options, "image_size", 32)
    seed = _take(options, "seed", 0)
    noise = _take(options, "noise", 0.2, float)
    if min(n_train, num_classes, channels, size) < 1 or n_test < 0:
        raise ValueError(
            "synthetic data needs n_train, num_classes, channels, image_size >= 1 and n_test >= 0"
        )
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, channels, 4, 4, generator=g)
    protos = F.interpolate(protos, size=(size, size), mode="bilinear", align_corners=False)
    protos = protos / protos.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    n = n_train + n_test
    # Balanced labels in a random order.
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    contrast = 0.1 + 0.1 * torch.rand(n, 1, 1, 1, generator=g)
    x = 0.5 + contrast * protos[y] + noise * torch.randn(n, channels, size, size, generator=g)
    x = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    full = TensorSplit(x, y)
    return SourceData(
        train=full.subset(n_train),
        test=TensorSplit(x[n_train:], y[n_train:]),
        num_classes=num_classes,
        default_augment=Augment(),
        classes=tuple(str(i) for i in range(num_classes)),
    )


def _torchvision_source(
    dataset: str,
    *,
    root: Path | None,
    download: bool,
    load: Callable[[str, bool, bool], tuple[Any, Any, Sequence[str]]],
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    default_augment: Augment,
) -> SourceData:
    """Load train and test through torchvision and convert each to uint8 [N,C,H,W] tensors once.

    ``load(root, train, download)`` returns ``(images, labels, classes)`` with images as a numpy
    array ``[N, H, W, C]``.
    """
    root_str = str(root if root is not None else _default_root())
    parts = []
    for train in (True, False):
        try:
            images, labels, classes = load(root_str, train, download)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            if download:
                raise
            raise DatasetNotFoundError(
                f"{dataset} is not in {root_str} (or its files fail the checksum): set "
                "`data.download: true` to fetch it there, or point `data.root` at a folder "
                f"that holds it ({err})"
            ) from err
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        parts.append(TensorSplit(x, torch.as_tensor(labels, dtype=torch.int64)))
    return SourceData(
        train=parts[0],
        test=parts[1],
        num_classes=num_classes,
        default_augment=default_augment,
        mean=mean,
        std=std,
        classes=tuple(classes),
    )


def _cifar_loader(cls_name: str) -> Callable[[str, bool, bool], tuple[Any, Any, Sequence[str]]]:
    def load(root: str, train: bool, download: bool) -> tuple[Any, Any, Sequence[str]]:
        import torchvision

        ds = getattr(torchvision.datasets, cls_name)(root, train=train, download=download)
        return ds.data, ds.targets, ds.classes

    return load


def _svhn_load(root: str, train: bool, download: bool) -> tuple[Any, Any, Sequence[str]]:
    import torchvision

    ds = torchvision.datasets.SVHN(root, split="train" if train else "test", download=download)
    # SVHN stores [N, C, H, W]; labels 0-9 (torchvision maps the original '10' to 0).
    return ds.data.transpose(0, 2, 3, 1), ds.labels, [str(i) for i in range(10)]


# Standard per-channel constants of the training sets, so results match published models.
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


@register_source("cifar10")
def _cifar10(*, root: Path | None, download: bool, options: dict[str, Any]) -> SourceData:
    """CIFAR-10 through torchvision (50,000 train / 10,000 test, 32x32 RGB)."""
    return _torchvision_source(
        "cifar10",
        root=root,
        download=download,
        load=_cifar_loader("CIFAR10"),
        num_classes=10,
        mean=_CIFAR10_STATS[0],
        std=_CIFAR10_STATS[1],
        default_augment=Augment(crop_padding=4, flip=True),
    )


@register_source("cifar100")
def _cifar100(*, root: Path | None, download: bool, options: dict[str, Any]) -> SourceData:
    """CIFAR-100 through torchvision (50,000 train / 10,000 test, 32x32 RGB, 100 classes)."""
    return _torchvision_source(
        "cifar100",
        root=root,
        download=download,
        load=_cifar_loader("CIFAR100"),
        num_classes=100,
        mean=_CIFAR100_STATS[0],
        std=_CIFAR100_STATS[1],
        default_augment=Augment(crop_padding=4, flip=True),
    )


@register_source("svhn")
def _svhn(*, root: Path | None, download: bool, options: dict[str, Any]) -> SourceData:
    """SVHN through torchvision (73,257 train / 26,032 test); no flips, digits are not symmetric."""
    return _torchvision_source(
        "svhn",
        root=root,
        download=download,
        load=_svhn_load,
        num_classes=10,
        mean=_SVHN_STATS[0],
        std=_SVHN_STATS[1],
        default_augment=Augment(crop_padding=2, flip=False),
    )


def _folder_split(split_dir: Path, classes: Sequence[str]) -> tuple[list[str], list[int]]:
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
    return paths, labels


@register_source("imagefolder")
def _imagefolder(*, root: Path | None, download: bool, options: dict[str, Any]) -> SourceData:
    """Images in ``root/train/<class>/*`` and ``root/test/<class>/*`` (class order: sorted names).

    All images must have the same size. Grey images load with one channel, anything else as RGB
    (the first training image decides; ``options.channels`` forces 1 or 3). The test split is put
    in a fixed random order (seed 0) so that ``test.subset(n)`` covers every class. Options:
    ``channels``, ``num_workers`` (DataLoader workers when ``in_memory`` is False; default 0).
    """
    expected = "root/train/<class>/<image> and root/test/<class>/<image>"
    if root is None:
        raise ValueError(
            f"the imagefolder source needs `data.root`: a folder laid out as {expected}"
        )
    channels = _take(options, "channels", None)
    num_workers = _take(options, "num_workers", 0)
    if channels not in (None, 1, 3):
        raise ValueError(f"data.options.channels must be 1 or 3, got {channels}")
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir() or not test_dir.is_dir():
        found = (
            sorted(p.name for p in root.iterdir()) if root.is_dir() else "nothing (no such folder)"
        )
        raise DatasetNotFoundError(
            f"imagefolder expects {expected} (class order = sorted class folder names); "
            f"`data.root` = {root} contains {found}"
        )
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    test_classes = {p.name for p in test_dir.iterdir() if p.is_dir()}
    if not classes:
        raise DatasetNotFoundError(f"no class folders in {train_dir}; expected {expected}")
    if extra := sorted(test_classes - set(classes)):
        raise ValueError(
            f"{test_dir} has class folders that {train_dir} lacks: {extra}; both splits need the "
            "same classes"
        )
    lists = []
    for split_dir in (train_dir, test_dir):
        paths, labels = _folder_split(split_dir, classes)
        if not paths:
            raise DatasetNotFoundError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}/<class>/; "
                f"expected {expected}"
            )
        lists.append((paths, labels))

    from PIL import Image

    with Image.open(lists[0][0][0]) as first:
        size = (first.height, first.width)
        if channels is None:
            channels = 1 if first.mode in ("1", "L", "I", "I;16", "F") else 3
    if size[0] != size[1]:
        raise ValueError(
            f"imagefolder needs square images (models take one image_size); {lists[0][0][0]} "
            f"is {size[1]}x{size[0]}"
        )
    train_files, test_files = (
        _FileList(paths, torch.as_tensor(labels, dtype=torch.int64), channels, size)
        for paths, labels in lists
    )
    test_order = torch.randperm(len(test_files), generator=torch.Generator().manual_seed(0))
    return SourceData(
        train=train_files,
        test=test_files.select(test_order),
        num_classes=len(classes),
        # Natural-image default: crop with 1/8 of the size as padding (4 px at 32x32), flip.
        default_augment=Augment(crop_padding=max(1, math.ceil(size[0] / 8)), flip=True),
        classes=tuple(classes),
        num_workers=num_workers,
    )
