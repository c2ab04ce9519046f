"""Cheap checks of a run's ``data:`` section, before any work starts.

What a run or a study's trials would otherwise find minutes later (after Ray starts, after the
dense model trains): an ``imagefolder`` whose layout or class folders are wrong, a torchvision
dataset that is neither on disk nor allowed to download, source options of the wrong type, and
a validation split that leaves no batch to train on or no example to validate on.

Every check lists folders and reads no image (one image header for an ``imagefolder``): the
sizes of the embedded and torchvision sources are known without loading them. Each source has
its check in :data:`SOURCE_CHECKS` (a source without one, e.g. one a user registered, is left to
its loader). :func:`check_data` runs them for one ``data:`` section and raises
:class:`DataCheckError`, whose message starts with the field and says the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from s2ap.data.embedded import DIGITS_IMAGES, DIGITS_TEST_FRACTION, SYNTHETIC_OPTIONS
from s2ap.data.imagefolder import IMAGE_EXTENSIONS
from s2ap.data.registry import _val_count, default_root
from s2ap.data.torchvision_sources import TORCHVISION_SOURCES, TorchvisionSource

__all__ = [
    "SOURCE_CHECKS",
    "DataCheckError",
    "DataSection",
    "check_data",
    "check_imagefolder",
    "check_split",
    "download_folder",
    "training_pool",
]

_LAYOUT = "root/train/<class>/<image> and root/test/<class>/<image>"
#: Options every source takes (normalisation and augmentation overrides, :func:`load_dataset`).
_COMMON_OPTIONS = ("mean", "std", "augment")


class DataCheckError(ValueError):
    """The data a run asks for cannot work; the message names the field and the fix."""


class DataSection(Protocol):
    """What the checks read of a ``data:`` section (:class:`s2ap.config.DataConfig`)."""

    source: str
    root: str | None
    download: bool
    val_size: float
    batch_size: int
    options: dict[str, Any]


#: A source's check: (root, download, options without the common ones) -> the number of
#: training-pool examples, or ``None`` when it is not known without loading.
SourceCheck = Callable[[Path | None, bool, Mapping[str, Any]], int | None]
SOURCE_CHECKS: dict[str, SourceCheck] = {}


def _yaml(value: Any) -> str:
    """A value as the user wrote it in YAML (``true``, not ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


def _whole(options: Mapping[str, Any], key: str, low: int) -> None:
    value = options.get(key)
    if key not in options:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataCheckError(f"data.options.{key}: must be a whole number, not {_yaml(value)}")
    if value < low:
        raise DataCheckError(f"data.options.{key}: must be at least {low}, got {value}")


def _refuse_unknown(source: str, options: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "none besides mean, std and augment"
        raise DataCheckError(
            f"data.options: {', '.join(unknown)}: unknown for source {source!r} (it takes "
            f"{takes}); remove them or check the spelling"
        )


# --- sources ------------------------------------------------------------------------------------
def _digits(root: Path | None, download: bool, options: Mapping[str, Any]) -> int:
    _refuse_unknown("digits", options, ())
    return DIGITS_IMAGES - round(DIGITS_TEST_FRACTION * DIGITS_IMAGES)


def _synthetic(root: Path | None, download: bool, options: Mapping[str, Any]) -> int:
    _refuse_unknown("synthetic", options, tuple(SYNTHETIC_OPTIONS))
    for key in ("n_train", "num_classes", "channels", "image_size"):
        _whole(options, key, 1)
    _whole(options, "n_test", 0)
    _whole(options, "seed", 0)
    noise = options.get("noise", 0.0)
    if isinstance(noise, bool) or not isinstance(noise, int | float) or noise < 0:
        raise DataCheckError(
            f"data.options.noise: must be a number >= 0 (a pixel noise std), not {_yaml(noise)}"
        )
    return int(options.get("n_train", SYNTHETIC_OPTIONS["n_train"]))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _torchvision_files(spec: TorchvisionSource) -> list[str] | None:
    """The files torchvision looks for (relative to the root), from its own class attributes;
    ``None`` for a class laid out otherwise (its loader decides)."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.dataset_class)
    if hasattr(cls, "base_folder") and hasattr(cls, "train_list"):  # CIFAR-10/100
        return [f"{cls.base_folder}/{name}" for name, _md5 in (*cls.train_list, *cls.test_list)]
    if hasattr(cls, "split_list"):  # SVHN
        return [cls.split_list[split][1] for split in ("train", "test")]
    return None


def _torchvision_check(spec: TorchvisionSource) -> SourceCheck:
    def check(root: Path | None, download: bool, options: Mapping[str, Any]) -> int | None:
        _refuse_unknown(spec.name, options, ())
        folder = root if root is not None else default_root()
        where = "data.root" if root is not None else f"data.root (unset: {folder})"
        if folder.exists() and not folder.is_dir():
            raise DataCheckError(f"{where}: {folder} is a file; give the folder of {spec.name}")
        files = _torchvision_files(spec)
        missing = [f for f in files or () if not (folder / f).is_file()]
        if missing and not download:
            raise DataCheckError(
                f"{where}: {spec.name} is not in {folder} (no {missing[0]}) and data.download "
                f"is false; set data.download: true to fetch it there, or point data.root at "
                f"a folder that holds it"
            )
        if missing:
            base = _nearest_existing(folder.absolute())
            if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
                raise DataCheckError(
                    f"{where}: {spec.name} must be downloaded into {folder}, but {base} is not "
                    "a writable folder; point data.root at a folder this user can write"
                )
        return spec.train_size

    return check


def _class_dirs(split_dir: Path) -> list[str]:
    # The loader's rule: every folder is a class (sorted names are the label order).
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _image_count(class_dir: Path) -> int:
    # The loader's rule: files with an image extension; d_type only, no stat per file.
    with os.scandir(class_dir) as entries:
        return sum(
            1
            for e in entries
            if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()
        )


def _first_image(class_dir: Path) -> Path:
    with os.scandir(class_dir) as entries:
        names = sorted(
            e.name
            for e in entries
            if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()
        )
    return class_dir / names[0]


def _check_first_image(path: Path) -> None:
    """The first training image sets the dataset's size: it must open and be square. PIL reads
    the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DataCheckError(
            f"data.root: {path} is not an image PIL can read ({exc}); remove it or replace it"
        ) from None
    if width != height:
        raise DataCheckError(
            f"data.root: {path} is {width}x{height}; imagefolder needs square images (models "
            "take one image_size): resize the folder once before using it"
        )


def _imagefolder_options(options: Mapping[str, Any]) -> None:
    channels = options.get("channels")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise DataCheckError(f"data.options.channels: must be 1 or 3, not {_yaml(channels)}")
    _whole(options, "num_workers", 0)
    if "cache" in options and not isinstance(options["cache"], bool):
        raise DataCheckError(
            f"data.options.cache: must be true or false, not {_yaml(options['cache'])}"
        )


def check_imagefolder(root: Path | None, download: bool, options: Mapping[str, Any]) -> int:
    """An image folder laid out as ``root/{train,test}/<class>/<image>``: both splits with the
    same class folders, each holding at least one image file, the first training image
    readable and square. Returns the number of training images."""
    _imagefolder_options(options)
    if root is None:
        raise DataCheckError(
            f"data.root: the imagefolder source needs data.root, a folder laid out as {_LAYOUT}"
        )
    if not root.exists():
        raise DataCheckError(
            f"data.root: {root} does not exist; give the folder laid out as {_LAYOUT} "
            "(relative paths are relative to the study or run file)"
        )
    if not root.is_dir():
        raise DataCheckError(f"data.root: {root} is a file; give the folder laid out as {_LAYOUT}")
    missing = [name for name in ("train", "test") if not (root / name).is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir())[:10] or "nothing"
        raise DataCheckError(
            f"data.root: {root} has no {' and no '.join(m + '/' for m in missing)} folder (it "
            f"holds {found}); imagefolder expects {_LAYOUT}"
        )
    train, test = _class_dirs(root / "train"), _class_dirs(root / "test")
    if not train:
        raise DataCheckError(
            f"data.root: {root / 'train'} has no class folders; expected {_LAYOUT}"
        )
    if set(train) != set(test):
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        sides = [
            f"only in train/: {only_train[:5]}" if only_train else "",
            f"only in test/: {only_test[:5]}" if only_test else "",
        ]
        raise DataCheckError(
            f"data.root: train/ and test/ of {root} need the same class folders "
            f"({'; '.join(s for s in sides if s)}); add or remove class folders"
        )
    counts = {s: {c: _image_count(root / s / c) for c in train} for s in ("train", "test")}
    for split, per_class in counts.items():
        empty = [c for c, n in per_class.items() if n == 0]
        if empty:
            raise DataCheckError(
                f"data.root: {root / split} has class folders without image files "
                f"({', '.join(IMAGE_EXTENSIONS)}): {empty[:5]}; every class needs at least one "
                "image in train/ and in test/"
            )
    _check_first_image(_first_image(root / "train" / train[0]))
    return sum(counts["train"].values())


SOURCE_CHECKS.update({"digits": _digits, "synthetic": _synthetic, "imagefolder": check_imagefolder})
SOURCE_CHECKS.update({spec.name: _torchvision_check(spec) for spec in TORCHVISION_SOURCES})


# --- options every source takes ---------------------------------------------------------------
def _check_common_options(options: Mapping[str, Any]) -> None:
    mean, std = options.get("mean"), options.get("std")
    if (mean is None) != (std is None):
        raise DataCheckError(
            "data.options: mean and std override the normalisation together; give both or none"
        )
    for key, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        ):
            raise DataCheckError(
                f"data.options.{key}: must be a list of numbers, one per channel (e.g. "
                f"[0.5, 0.5, 0.5]), not {_yaml(values)}"
            )
    if std is not None and min(std) <= 0:
        raise DataCheckError(f"data.options.std: every value must be above 0, got {std}")
    if mean is not None and std is not None and len(mean) != len(std):
        raise DataCheckError(
            f"data.options: mean has {len(mean)} values and std {len(std)}; one per channel each"
        )
    augment = options.get("augment")
    if augment is not None and not isinstance(augment, dict):
        raise DataCheckError(
            "data.options.augment: must be a mapping (crop_padding, flip, padding_mode), not "
            f"{_yaml(augment)}"
        )


# --- the split ----------------------------------------------------------------------------------
def check_split(val_size: float, pool: int, batch_size: int) -> tuple[int, int]:
    """The validation split carved from a training pool of ``pool`` examples must leave at least
    one full batch to train on and at least one example to validate on. Returns (train, val)."""
    try:
        n_val = _val_count(val_size, pool)
    except ValueError:
        n_val = pool  # the split takes the whole pool (or more): nothing left to train on
    n_val = min(n_val, pool)
    n_train = pool - n_val
    if n_val < 1:
        raise DataCheckError(
            f"data.val_size: {val_size:g} of the {pool} training examples is no example at all, "
            "so there is nothing to validate (or select a model) on; raise it (e.g. 0.1)"
        )
    if n_train < batch_size:
        raise DataCheckError(
            f"data.val_size: {val_size:g} leaves {n_train} of the {pool} training examples to "
            f"train on, less than one batch (data.batch_size: {batch_size}); lower "
            "data.val_size (e.g. 0.1) or data.batch_size"
        )
    return n_train, n_val


def _root(data: DataSection) -> Path | None:
    # As load_dataset resolves it (relative to the working directory; studies made it absolute).
    return Path(data.root).expanduser().resolve() if data.root is not None else None


def training_pool(data: DataSection, *, files: bool = True) -> int | None:
    """The training pool's size after the source's checks; ``None`` when unknown.

    ``files=False`` checks only what does not depend on this machine's files (``s2ap submit``:
    the data lives on the cluster): options and the sizes known without files.
    """
    check = SOURCE_CHECKS.get(data.source)
    if check is None:
        return None
    options = {k: v for k, v in (data.options or {}).items() if k not in _COMMON_OPTIONS}
    _check_common_options(data.options or {})
    if files or data.source in ("digits", "synthetic"):
        return check(_root(data), data.download, options)
    spec = next((s for s in TORCHVISION_SOURCES if s.name == data.source), None)
    if spec is not None:
        _refuse_unknown(spec.name, options, ())
        return spec.train_size
    return None


def download_folder(data: DataSection) -> Path | None:
    """The folder a torchvision source will download into (``data.download`` true and its
    files not there yet), else ``None``: the caller checks that it can be created there (a
    permission check alone says yes to root under ``/proc``)."""
    spec = next((s for s in TORCHVISION_SOURCES if s.name == data.source), None)
    if spec is None or not data.download:
        return None
    folder = _root(data) or default_root()
    files = _torchvision_files(spec)
    return folder if any(not (folder / f).is_file() for f in files or ()) else None


def check_data(data: DataSection, *, files: bool = True) -> Path | None:
    """Everything :func:`s2ap.data.load_dataset` would refuse or get wrong for ``data``, found
    in seconds (see the module docstring); raises :class:`DataCheckError`. Returns the folder
    a download will write to (:func:`download_folder`), for the caller to check."""
    pool = training_pool(data, files=files)
    if pool is not None:
        check_split(data.val_size, pool, data.batch_size)
    return download_folder(data) if files else None
