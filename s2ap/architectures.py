"""The architecture registry: names to model builders, and :func:`create_model`.

Apart from the networks (:mod:`s2ap.models`), so that the names are known without torch: a
config's ``model.arch`` is checked against :func:`list_models` when a study file is validated,
also by read commands that never build a model. The built-in names are declared here with the
module that registers them (:class:`s2ap.registry.Registry`); the first build imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from s2ap.registry import Registry

if TYPE_CHECKING:
    from torch import nn

__all__ = ["InputSpec", "ModelBuilder", "create_model", "list_models", "register_model"]


@dataclass(frozen=True)
class InputSpec:
    """What a model is built for: the data's classes, channels, image size and normalisation.

    ``mean`` and ``std`` have one entry per input channel (the dataset provides them); checked
    once by :func:`create_model`, so builders take them as given.
    """

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


ModelBuilder = Callable[[InputSpec], "nn.Module"]
_MODELS: Registry[ModelBuilder] = Registry("model")
# The built-in architectures, registered by s2ap.models (imported on first build).
for _name in ("mlp", "small_cnn", "resnet18", "vgg16_bn", "vgg6_narrow", "wrn_28_4"):
    _MODELS.declare(_name, "s2ap.models")


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that adds a model builder to the registry under ``name``.

    A builder takes an :class:`InputSpec` (it may ignore the fields it does not need) and
    returns an ``nn.Module`` whose first layer is a :class:`~s2ap.models.Normalize`.
    """
    return _MODELS.register(name)


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return _MODELS.names()


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> nn.Module:
    """Build the registered architecture ``name`` for the given data shape and normalisation.

    ``mean`` and ``std`` must have one entry per input channel (the dataset provides them).
    Raises ``ValueError`` for an unknown name (listing the registered ones) or inconsistent shapes.
    """
    builder = _MODELS.get(name)
    if num_classes < 1 or in_channels < 1 or image_size < 1:
        raise ValueError(
            f"model {name!r} needs num_classes, in_channels and image_size >= 1, got "
            f"num_classes={num_classes}, in_channels={in_channels}, image_size={image_size}"
        )
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(
            f"model {name!r}: mean and std need one value per input channel "
            f"(in_channels={in_channels}), got mean={list(mean)}, std={list(std)}"
        )
    return builder(InputSpec(num_classes, in_channels, image_size, tuple(mean), tuple(std)))
