"""Sources that need no files: scikit-learn's digits and a synthetic pattern dataset.

They back the quickstart and the tests: real (if tiny) images with no download, and tensors of
any size, class count and channel count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from s2ap.data.augment import Augment
from s2ap.data.registry import SourceData, pop_option, register_source
from s2ap.data.splits import TensorSplit

# The sources themselves are reached through load_dataset("digits" | "synthetic").
__all__ = ["DIGITS_IMAGES", "DIGITS_TEST_FRACTION", "SYNTHETIC_OPTIONS"]

#: scikit-learn's digits: how many images, and the fraction of them held out as the test split
#: (what :mod:`s2ap.data.checks` needs to size the training pool without loading it).
DIGITS_IMAGES = 1797
DIGITS_TEST_FRACTION = 0.2
#: The ``synthetic`` source's options and their defaults (ints, except ``noise``).
SYNTHETIC_OPTIONS: dict[str, int | float] = {
    "n_train": 1000,
    "n_test": 200,
    "num_classes": 10,
    "channels": 3,
    "image_size": 32,
    "seed": 0,
    "noise": 0.2,
}


def _digit_names(num_classes: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(num_classes))


@register_source("digits")
def digits(*, root: Path | None, download: bool, options: dict[str, Any]) -> SourceData:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): no download needed.

    It has no official test split; 20% is carved with a fixed permutation (seed 0), independent of
    ``split_seed``, so the test set is the same for every study.
    """
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(labels, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = round(DIGITS_TEST_FRACTION * len(y))
    full = TensorSplit(x, y)
    return SourceData(
        train=full.select(perm[n_test:]),
        test=full.select(perm[:n_test]),
        num_classes=10,
        default_augment=Augment(),
        classes=_digit_names(10),
    )


@register_source("synthetic")
def synthetic(*, root: Path | None, download: bool, options: dict[str, Any]) -> SourceData:
    """Random class-dependent spatial patterns plus pixel noise; deterministic for a given seed.

    Each class has a smooth prototype (a random 4x4 map per channel, upsampled bilinearly); an
    example is its class prototype at a random contrast, plus Gaussian noise, stored as uint8.
    Options: ``n_train`` (1000), ``n_test`` (200), ``num_classes`` (10), ``channels`` (3),
    ``image_size`` (32), ``seed`` (0), ``noise`` (0.2, the noise std in [0, 1] units).
    """
    n_train, n_test, num_classes, channels, size, seed = (
        pop_option(options, key, SYNTHETIC_OPTIONS[key])
        for key in ("n_train", "n_test", "num_classes", "channels", "image_size", "seed")
    )
    noise = pop_option(options, "noise", SYNTHETIC_OPTIONS["noise"], float)
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
    return SourceData(
        train=TensorSplit(x[:n_train], y[:n_train]),
        test=TensorSplit(x[n_train:], y[n_train:]),
        num_classes=num_classes,
        default_augment=Augment(),
        classes=_digit_names(num_classes),
    )
