"""The cheap data checks (s2ap.data.checks): what they accept, what they refuse, and that they
agree with the loaders on sizes. The refusals as users meet them are rows of
tests/test_bad_input.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from s2ap.data import list_sources, load_dataset
from s2ap.data.checks import (
    SOURCE_CHECKS,
    DataCheckError,
    check_data,
    check_imagefolder,
    check_split,
    download_folder,
    training_pool,
)


def _data(**fields: Any) -> SimpleNamespace:
    base = {
        "source": "digits",
        "root": None,
        "download": False,
        "val_size": 0.2,
        "batch_size": 128,
        "options": {},
    }
    return SimpleNamespace(**{**base, **fields})


def test_every_builtin_source_has_a_check() -> None:
    assert set(list_sources()) <= set(SOURCE_CHECKS)


@pytest.mark.parametrize(
    ("val_size", "expected"), [(0.1, (90, 10)), (90, (10, 90)), (90.0, (10, 90))]
)
def test_split_leaves_a_batch_and_a_validation_example(val_size: float, expected: Any) -> None:
    assert check_split(val_size, 100, 10) == expected


@pytest.mark.parametrize(
    ("val_size", "message"),
    [
        (91, "less than one batch"),
        (100, "leaves 0 of the 100"),
        (150, "leaves 0 of the 100"),
        (0.999, "less than one batch"),
        (0.001, "nothing to validate"),
    ],
)
def test_split_refusals(val_size: float, message: str) -> None:
    with pytest.raises(DataCheckError, match=message):
        check_split(val_size, 100, 10)


def test_pool_sizes_match_the_loaders() -> None:
    assert training_pool(_data()) == len(load_dataset("digits", val_size=0).train)
    options = {"n_train": 64, "n_test": 8, "image_size": 4, "channels": 1}
    assert training_pool(_data(source="synthetic", options=options)) == 64


def _folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 3) -> Path:
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (6, 6)).save(root / split / cls / f"{i}.png")
    return root


def test_an_image_folder_is_counted_without_decoding(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images")
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    assert check_imagefolder(root, False, {}) == 6
    assert check_data(_data(source="imagefolder", root=str(root), batch_size=4, val_size=2)) is None
    assert len(load_dataset("imagefolder", root=root, val_size=0).train) == 6


def test_image_folder_option_types(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images")
    for options, field in (
        ({"channels": True}, "channels"),
        ({"num_workers": 1.5}, "num_workers"),
        ({"cache": 1}, "cache"),
    ):
        with pytest.raises(DataCheckError, match=rf"data\.options\.{field}"):
            check_imagefolder(root, False, options)


def _fake_cifar(root: Path) -> None:
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (batches / name).write_bytes(b"x")


def test_a_torchvision_set_on_disk_passes_and_needs_no_download(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)
    data = _data(source="cifar10", root=str(tmp_path), download=True, val_size=5000)
    assert check_data(data) is None  # the files are there: nothing to download


def test_a_torchvision_download_names_its_folder(tmp_path: Path) -> None:
    data = _data(source="svhn", root=str(tmp_path / "svhn"), download=True)
    assert check_data(data) == tmp_path / "svhn"
    assert download_folder(_data(source="svhn", root=str(tmp_path))) is None  # no download
    with pytest.raises(DataCheckError, match=r"data\.download: true"):
        check_data(_data(source="svhn", root=str(tmp_path)))


def test_submit_checks_need_no_files(tmp_path: Path) -> None:
    data = _data(source="cifar10", root=str(tmp_path / "absent"), val_size=49_990)
    with pytest.raises(DataCheckError, match="less than one batch"):
        check_data(data, files=False)
    assert check_data(_data(source="imagefolder", root="/nowhere"), files=False) is None


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"n_train": True}, "n_train"),
        ({"n_train": 2.5}, "n_train"),
        ({"noise": "loud"}, "noise"),
        ({"n_trian": 10}, "n_trian"),
        ({"mean": [0.5]}, "mean and std"),
        ({"mean": [0.5], "std": [0.0]}, "std"),
    ],
)
def test_source_option_refusals(options: dict[str, Any], field: str) -> None:
    with pytest.raises(DataCheckError, match=field):
        check_data(_data(source="synthetic", options=options, batch_size=8))
