"""The dataset source registry and :func:`load_dataset`, which turns a source into splits.

A source (``digits``, ``synthetic``, ``cifar10``, ...) hands back a training pool and a fixed
test split; :func:`load_dataset` carves the validation split from the training pool by a fixed
permutation of ``split_seed``, decodes or streams folder splits, settles the normalisation
constants and the default augmentation, and moves everything to the device. Model selection
uses that validation split, never the test split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2ap.registry import Registry

# torch is imported by the functions that load data: the source names (what a config is checked
# against) come without it (s2ap.registry).
if TYPE_CHECKING:
    import torch

    from s2ap.data.augment import Augment
    from s2ap.data.splits import DatasetSplits, FileList, Split, TensorSplit

__all__ = [
    "DatasetNotFoundError",
    "SourceData",
    "default_root",
    "list_sources",
    "load_dataset",
    "pop_option",
    "register_source",
]

Stats = tuple[tuple[float, ...], tuple[float, ...]]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where the configuration says; the message says how to fix it."""


@dataclass
class SourceData:
    """What a source hands to :func:`load_dataset`: a training pool (the validation split is carved
    from it later), a fixed test split, and the dataset's metadata."""

    train: TensorSplit | FileList
    test: TensorSplit | FileList
    num_classes: int
    default_augment: Augment
    mean: tuple[float, ...] | None = None  # None: computed on the training split
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] = ()
    num_workers: int = 0  # DataLoader workers, for file lists loaded with in_memory=False


SourceFn = Callable[..., SourceData]
_SOURCES: Registry[SourceFn] = Registry("data source")
# The built-in sources, by the module that registers each (imported on first load).
for _name, _module in (
    ("digits", "s2ap.data.embedded"),
    ("synthetic", "s2ap.data.embedded"),
    ("cifar10", "s2ap.data.torchvision_sources"),
    ("cifar100", "s2ap.data.torchvision_sources"),
    ("svhn", "s2ap.data.torchvision_sources"),
    ("imagefolder", "s2ap.data.imagefolder"),
):
    _SOURCES.declare(_name, _module)


def register_source(name: str) -> Callable[[SourceFn], SourceFn]:
    """Decorator that adds a dataset source under ``name``.

    A source is called as ``fn(root=Path | None, download=bool, options=dict)`` and returns a
    :class:`SourceData`. It removes the keys it understands from ``options`` (see
    :func:`pop_option`); whatever is left is reported to the user as unknown.
    """
    return _SOURCES.register(name)


def list_sources() -> list[str]:
    """Names of all registered dataset sources, sorted."""
    return _SOURCES.names()


def pop_option(
    options: dict[str, Any], key: str, default: Any, kind: Callable[[Any], Any] = int
) -> Any:
    """Remove ``key`` from a source's ``options`` and convert it with ``kind``; else ``default``."""
    return kind(options.pop(key)) if key in options else default


def default_root() -> Path:
    """Where downloadable sources keep their files: ``$S2AP_DATA`` or ``~/.cache/s2ap/data``."""
    return Path(os.environ.get("S2AP_DATA", "~/.cache/s2ap/data")).expanduser().resolve()


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


def _split_pool(
    data: SourceData, val_size: float | int, split_seed: int, in_memory: bool
) -> tuple[Split, Split, Split]:
    """(train, val, test): the validation split carved from the pool, file lists decoded or
    streamed. The test split never depends on ``split_seed``."""
    import torch

    from s2ap.data.splits import FileList, LoaderSplit

    n = len(data.train)
    n_val = _val_count(val_size, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    parts = (data.train.select(perm[n_val:]), data.train.select(perm[:n_val]), data.test)

    def ready(part: TensorSplit | FileList) -> Split:
        if not isinstance(part, FileList):
            return part
        return part.load() if in_memory else LoaderSplit(part, num_workers=data.num_workers)

    train, val, test = (ready(part) for part in parts)
    return train, val, test


def _image_shape(split: Split) -> tuple[int, int, int]:
    """(C, H, W) of a split's images, known without decoding them."""
    from s2ap.data.splits import TensorSplit

    if isinstance(split, TensorSplit):
        shape = tuple(split.x.shape[1:])
    else:
        shape = (split.files.channels, *split.files.size)
    c, h, w = (int(v) for v in shape)
    return c, h, w


def _normalisation(data: SourceData, train: Split, mean: Any, std: Any, in_channels: int) -> Stats:
    """Per-channel mean/std: the user's override, else the source's constants, else measured
    on the training split (its first 5,000 images when it streams from files)."""
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ValueError("data.options needs both mean and std to override the normalisation")
        stats: Stats = (tuple(map(float, mean)), tuple(map(float, std)))
    elif data.mean is not None and data.std is not None:
        stats = (data.mean, data.std)
    else:
        from s2ap.data.splits import TensorSplit, channel_stats

        measured = train if isinstance(train, TensorSplit) else train.subset(5000).materialize()
        stats = channel_stats(measured)
    if len(stats[0]) != in_channels or len(stats[1]) != in_channels:
        raise ValueError(
            f"data.options mean/std need {in_channels} values (one per channel), got "
            f"mean={list(stats[0])}, std={list(stats[1])}"
        )
    return stats


def _augment_override(default: Augment, override: dict[str, Any] | None) -> Augment:
    from s2ap.data.augment import Augment

    if override is None:
        return default
    try:
        return Augment(**override)
    except TypeError as err:
        raise ValueError(
            f"data.options.augment takes crop_padding, flip and padding_mode, got {override!r}"
        ) from err


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
    from s2ap.data.splits import DatasetSplits

    load = _SOURCES.get(source)
    opts = dict(options or {})
    mean, std, augment = opts.pop("mean", None), opts.pop("std", None), opts.pop("augment", None)
    root_path = Path(root).expanduser().resolve() if root is not None else None
    data = load(root=root_path, download=download, options=opts)
    if opts:
        raise ValueError(f"unknown data.options for source {source!r}: {', '.join(sorted(opts))}")

    train, val, test = _split_pool(data, val_size, split_seed, in_memory)
    # The training split is never empty (the validation count leaves at least one example).
    in_channels, height, width = _image_shape(train)
    mean, std = _normalisation(data, train, mean, std, in_channels)
    result = DatasetSplits(
        name=source,
        train=train,
        val=val,
        test=test,
        num_classes=data.num_classes,
        in_channels=in_channels,
        image_size=max(height, width),
        mean=mean,
        std=std,
        default_augment=_augment_override(data.default_augment, augment),
        classes=data.classes,
    )
    return result.to(device)
