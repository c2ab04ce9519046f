"""The ``imagefolder`` source: images in ``root/train/<class>/*`` and ``root/test/<class>/*``.

For datasets that come as folders of image files, e.g. an offline copy of CIFAR-10 exported as
PNG or JPEG. Splits are :class:`FolderFiles` (a :class:`~s2ap.data.splits.FileList`): decoded into
memory once, or streamed through a DataLoader when ``data.in_memory`` is false.

In memory, a split folder is decoded once into one uint8 ``[N, C, H, W]`` array, in one thread
(PIL into a preallocated array: measured 4x faster than a thread pool on 2 cores, where the
threads only contend), and cached on disk as a ``.npy`` file (read back with
``allow_pickle=False``) under ``root/.s2ap-cache/``, keyed by the files' names, sizes and
modification times. Every later load, e.g. each Ray worker of a study, reads that file instead of
60,000 JPEGs (CIFAR-10: 22 s and 1 GB peak before, see ``benchmarks/cifar_cpu.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from s2ap.data.augment import Augment
from s2ap.data.registry import (
    DatasetNotFoundError,
    SourceData,
    default_root,
    pop_option,
    register_source,
)
from s2ap.data.splits import FileList, TensorSplit

__all__ = ["CACHE_DIRNAME", "IMAGE_EXTENSIONS", "DecodedFolder", "FolderFiles"]

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
#: The cache folder inside ``data.root`` (falls back to ``$S2AP_DATA``/``~/.cache/s2ap/data``
#: when the data folder is read-only).
CACHE_DIRNAME = ".s2ap-cache"
# Bump when the decoded content for the same files would change (decoder, layout).
_CACHE_FORMAT = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _decode_file(path: str, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image as a uint8 [C, H, W] array (a view), the pixels of :meth:`FileList.decode`."""
    from PIL import Image

    with Image.open(path) as file:
        mode = "L" if channels == 1 else "RGB"
        img = file if file.mode == mode else file.convert(mode)
        if (img.height, img.width) != size:
            raise ValueError(
                f"image {path} is {img.width}x{img.height} but the dataset's images are "
                f"{size[1]}x{size[0]}; in-memory datasets need images of one size (resize the "
                "folder once, e.g. with PIL, before loading it)"
            )
        return np.asarray(img).reshape(size[0], size[1], channels).transpose(2, 0, 1)


def _decode_all(paths: Sequence[str], channels: int, size: tuple[int, int]) -> np.ndarray:
    """Every image, in order, as one uint8 [N, C, H, W] array (one thread: see the module doc).

    Written image by image into the result, so the peak is the result's size."""
    out = np.empty((len(paths), channels, *size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = _decode_file(path, channels, size)
    return out


@dataclass(eq=False)
class DecodedFolder:
    """All images of one split folder, decoded once per process and cached on disk as ``.npy``.

    ``paths`` in the split's label order. ``cache_dirs``: where to look for (and write) the cache
    file, first writable one wins; empty: no disk cache.
    """

    root: Path
    paths: list[str]
    channels: int
    size: tuple[int, int]
    cache_dirs: tuple[Path, ...] = ()
    _array: np.ndarray | None = field(default=None, repr=False)
    _name: str | None = field(default=None, repr=False)
    _served: int = field(default=0, repr=False)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, *self.size)

    def cache_name(self) -> str:
        """The cache file's name: a hash of every file's relative path, size and mtime (a
        changed, added or removed image gives another name; stale files are never read)."""
        if self._name is not None:
            return self._name
        h = hashlib.sha256()
        h.update(json.dumps([_CACHE_FORMAT, self.channels, list(self.size)]).encode())
        start = len(str(self.root)) + 1  # every path is root/<split>/<class>/<name>
        for path in self.paths:
            st = os.stat(path)
            h.update(f"{path[start:]}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        n, c, height, width = self.shape
        self._name = f"{n}x{c}x{height}x{width}-{h.hexdigest()[:24]}.npy"
        return self._name

    def _read_cache(self, name: str) -> np.ndarray | None:
        for folder in self.cache_dirs:
            path = folder / name
            if not path.is_file():
                continue
            try:  # never unpickles: a file that needs pickle raises and is ignored
                # Read whole: gathering rows from a memory map was 5x slower (page faults).
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                continue
            if array.shape == self.shape and array.dtype == np.uint8:
                return array
        return None

    def _write_cache(self, name: str, array: np.ndarray) -> None:
        for folder in self.cache_dirs:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                # Atomic: concurrent loaders (Ray workers) never see a partial file.
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npy")
                try:
                    with os.fdopen(fd, "wb") as fh:
                        np.save(fh, array, allow_pickle=False)
                    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only
                    os.replace(tmp, folder / name)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                return
            except OSError:
                continue  # read-only data folder: try the next place
        if self.cache_dirs:
            warnings.warn(
                f"imagefolder: could not write the decoded-images cache to any of "
                f"{[str(d) for d in self.cache_dirs]}; every load decodes the images again",
                stacklevel=3,
            )

    def in_memory(self) -> bool:
        """Whether the decoded images are in memory, after reading the disk cache if it has
        them (no decoding)."""
        if self._array is None and self.cache_dirs:
            self._array = self._read_cache(self.cache_name())
        return self._array is not None

    def array(self) -> np.ndarray:
        """The decoded images, uint8 [N, C, H, W]: from memory, the disk cache, or decoded now
        (and written to the cache)."""
        if not self.in_memory():
            self._array = _decode_all(self.paths, self.channels, self.size)
            if self.cache_dirs:
                self._write_cache(self.cache_name(), self._array)
        assert self._array is not None
        return self._array

    def rows(self, index: np.ndarray) -> np.ndarray:
        """A copy of the rows at ``index``. Once as many rows as the folder holds have been
        served (the training pool's train and validation parts), the decoded array is let go:
        a later call reads the disk cache again."""
        out = self.array()[index]
        self._served += len(index)
        if self._served >= len(self.paths):
            self._array, self._served = None, 0
        return out


@dataclass(eq=False)
class FolderFiles(FileList):
    """A :class:`FileList` whose files are rows ``index`` of a :class:`DecodedFolder`.

    :meth:`load` gathers the rows from the decoded folder (decoding it, or reading its disk cache,
    once); :meth:`decode` (what a streaming :class:`~s2ap.data.splits.LoaderSplit` runs) still
    reads one file, with the same pixels.
    """

    folder: DecodedFolder = field(kw_only=True)
    index: Tensor = field(kw_only=True)

    def select(self, index: Tensor) -> FolderFiles:
        """The files at ``index``, in that order."""
        idx = index.tolist()
        return FolderFiles(
            [self.paths[i] for i in idx],
            self.labels[idx],
            self.channels,
            self.size,
            folder=self.folder,
            index=self.index[idx],
        )

    def load(self, workers: int | None = None) -> TensorSplit:
        """The files as one uint8 tensor, gathered from the decoded folder. A small part (under a
        quarter, e.g. a streamed split's 5,000-image statistics sample) of a folder that is
        neither in memory nor cached decodes just its own files. ``workers`` is unused: decoding
        runs in one thread."""
        if 4 * len(self) < len(self.folder.paths) and not self.folder.in_memory():
            x = _decode_all(self.paths, self.channels, self.size)
        else:
            x = self.folder.rows(self.index.numpy())
        return TensorSplit(torch.from_numpy(x), self.labels.clone())


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
        # os.scandir: the file type comes with the listing (no stat per file); names sort as
        # pathlib sorts the paths of one folder.
        with os.scandir(class_dir) as entries:
            names = sorted(
                e.name
                for e in entries
                if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()
            )
        prefix = f"{class_dir}{os.sep}"
        paths += [prefix + n for n in names]
        labels += [label] * len(names)
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


def _flag(value: Any) -> bool:
    """A yes/no option (a YAML boolean)."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"data.options.cache must be true or false, got {value!r}")


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
    ``channels``, ``num_workers`` (DataLoader workers when ``in_memory`` is False; default 0),
    ``cache`` (default true: keep the decoded images as ``.npy`` in ``root/.s2ap-cache/``, or in
    ``$S2AP_DATA``/``~/.cache/s2ap/data`` when ``root`` is read-only; false: decode every time).
    """
    train_dir, test_dir = _split_dirs(root)
    assert root is not None
    channels = pop_option(options, "channels", None)
    num_workers = pop_option(options, "num_workers", 0)
    cache = pop_option(options, "cache", True, _flag)
    if channels not in (None, 1, 3):
        raise ValueError(f"data.options.channels must be 1 or 3, got {channels}")
    classes = _class_names(train_dir, test_dir)
    (train_paths, train_labels), (test_paths, test_labels) = (
        _scan_split(split_dir, classes) for split_dir in (train_dir, test_dir)
    )
    size, channels = _probe(train_paths[0], channels)
    cache_dirs = (root / CACHE_DIRNAME, default_root() / "imagefolder-cache") if cache else ()

    def files(paths: list[str], labels: list[int]) -> FolderFiles:
        folder = DecodedFolder(root, paths, channels, size, cache_dirs)
        return FolderFiles(
            paths,
            torch.as_tensor(labels, dtype=torch.int64),
            channels,
            size,
            folder=folder,
            index=torch.arange(len(paths)),
        )

    train, test = files(train_paths, train_labels), files(test_paths, test_labels)
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
