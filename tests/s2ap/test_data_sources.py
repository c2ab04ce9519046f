"""The table-driven torchvision sources: one generic loader reads any row's layout, labels and
split argument. Two small stand-in dataset classes (one per image layout) play torchvision's
part, so no download is needed; the loader under test is the real one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision

from s2ap.data import Augment, DatasetNotFoundError, list_sources, load_dataset
from s2ap.data.torchvision_sources import (
    TORCHVISION_SOURCES,
    TorchvisionSource,
    register_torchvision_source,
)


class _NHWC:
    """CIFAR-like: ``train=`` selects the split, ``.data`` is [N, H, W, C], ``.targets``."""

    def __init__(self, root: str, *, download: bool, train: bool) -> None:
        n = 12 if train else 6
        rng = np.random.default_rng(0 if train else 1)
        self.data = rng.integers(0, 256, size=(n, 5, 4, 3), dtype=np.uint8)
        self.targets = [i % 3 for i in range(n)]
        self.classes = ["a", "b", "c"]


class _NCHW:
    """SVHN-like: ``split=`` selects the split, ``.data`` is [N, C, H, W], ``.labels``."""

    def __init__(self, root: str, *, download: bool, split: str) -> None:
        if not Path(root, "present").exists():
            raise RuntimeError("Dataset not found or corrupted.")
        n = 10 if split == "train" else 4
        self.data = np.arange(n * 3 * 4 * 4, dtype=np.uint8).reshape(n, 3, 4, 4)
        self.labels = np.arange(n) % 2


@pytest.fixture
def fake_sources(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(torchvision.datasets, "S2apFakeNHWC", _NHWC, raising=False)
    monkeypatch.setattr(torchvision.datasets, "S2apFakeNCHW", _NCHW, raising=False)
    if "fake-nhwc" in list_sources():  # the registry is process-wide: register once
        return ["fake-nhwc", "fake-nchw"]
    common: dict[str, Any] = {"mean": (0.5,) * 3, "std": (0.25,) * 3, "num_classes": 3}
    register_torchvision_source(
        TorchvisionSource(
            name="fake-nhwc",
            dataset_class="S2apFakeNHWC",
            default_augment=Augment(crop_padding=1, flip=True),
            **common,
        )
    )
    register_torchvision_source(
        TorchvisionSource(
            name="fake-nchw",
            dataset_class="S2apFakeNCHW",
            default_augment=Augment(),
            split_argument="split",
            labels_attribute="labels",
            layout="NCHW",
            classes=("x", "y", "z"),
            **common,
        )
    )
    return ["fake-nhwc", "fake-nchw"]


def test_every_row_is_a_registered_source() -> None:
    assert {s.name for s in TORCHVISION_SOURCES} <= set(list_sources())


def test_nhwc_rows_are_transposed_and_labelled(fake_sources: list[str], tmp_path: Path) -> None:
    data = load_dataset("fake-nhwc", root=str(tmp_path), val_size=4, split_seed=0)
    raw = _NHWC(str(tmp_path), download=False, train=False)
    assert data.test.x.shape == (6, 3, 5, 4)
    assert torch.equal(data.test.y, torch.tensor(raw.targets))
    # channel c of image 0 is the dataset's [0, :, :, c] plane
    assert torch.equal(data.test.x[0], torch.from_numpy(raw.data[0]).permute(2, 0, 1))
    assert len(data.train) + len(data.val) == 12 and len(data.val) == 4
    assert data.num_classes == 3 and data.default_augment.crop_padding == 1


def test_nchw_rows_read_split_and_labels(fake_sources: list[str], tmp_path: Path) -> None:
    (tmp_path / "present").touch()
    data = load_dataset("fake-nchw", root=str(tmp_path), val_size=2, split_seed=0)
    assert data.test.x.shape == (4, 3, 4, 4)
    assert data.test.y.tolist() == [0, 1, 0, 1]
    assert len(data.train) + len(data.val) == 10


def test_missing_files_name_the_fix(fake_sources: list[str], tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"data\.download: true.*data\.root"):
        load_dataset("fake-nchw", root=str(tmp_path / "empty"), val_size=2)
