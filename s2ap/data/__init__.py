"""Datasets held as tensors on the training device.

Adversarial training runs ~11 forward/backward passes per batch, so the input pipeline must cost
next to nothing: a split is one ``[N, C, H, W]`` tensor plus one label tensor, moved to the GPU
once; batches are gathered by index and augmented there, vectorised over the batch; no worker
processes, no per-example Python.

- :mod:`s2ap.data.augment`: random crop and flip on the device (:class:`Augment`).
- :mod:`s2ap.data.splits`: :class:`TensorSplit`, :class:`LoaderSplit` (folder datasets too large
  for memory, same ``batches(...)``), :class:`DatasetSplits`, file lists.
- :mod:`s2ap.data.registry`: the source registry and :func:`load_dataset`, which carves a
  validation split from the training set by a fixed permutation of ``split_seed``. Model
  selection uses that validation split, never the test split.
- Sources: ``digits`` and ``synthetic`` (:mod:`~s2ap.data.embedded`, no files), ``cifar10``,
  ``cifar100``, ``svhn`` (:mod:`~s2ap.data.torchvision_sources`, one table row each) and
  ``imagefolder`` (:mod:`~s2ap.data.imagefolder`, ``root/train/<class>/*``,
  ``root/test/<class>/*``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s2ap.data.augment import Augment, crop_rows, flip_rows
    from s2ap.data.registry import (
        DatasetNotFoundError,
        SourceData,
        list_sources,
        load_dataset,
        pop_option,
        register_source,
    )
    from s2ap.data.splits import (
        DatasetSplits,
        FileList,
        LoaderSplit,
        Split,
        TensorSplit,
        channel_stats,
    )
    from s2ap.data.torchvision_sources import TorchvisionSource, register_torchvision_source

# Imported on first use (PEP 562): the source names are known without torch
# (s2ap.data.registry), and each source module is imported when its source loads.
_EXPORTS = {
    **dict.fromkeys(("Augment", "crop_rows", "flip_rows"), "s2ap.data.augment"),
    **dict.fromkeys(
        (
            "DatasetNotFoundError",
            "SourceData",
            "list_sources",
            "load_dataset",
            "pop_option",
            "register_source",
        ),
        "s2ap.data.registry",
    ),
    **dict.fromkeys(
        ("DatasetSplits", "FileList", "LoaderSplit", "Split", "TensorSplit", "channel_stats"),
        "s2ap.data.splits",
    ),
    **dict.fromkeys(
        ("TorchvisionSource", "register_torchvision_source"), "s2ap.data.torchvision_sources"
    ),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 's2ap.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "Augment",
    "DatasetNotFoundError",
    "DatasetSplits",
    "FileList",
    "LoaderSplit",
    "SourceData",
    "Split",
    "TensorSplit",
    "TorchvisionSource",
    "channel_stats",
    "crop_rows",
    "flip_rows",
    "list_sources",
    "load_dataset",
    "pop_option",
    "register_source",
    "register_torchvision_source",
]
