"""Architecture registry: every model builds, has the right output shape, normalises its input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from s2ap.models import Normalize, create_model, list_models, register_model

# Input sizes each architecture is meant for; a newly registered model must be added here.
INPUT_SIZES = {
    "resnet18": [32],
    "vgg16_bn": [32],
    "vgg6_narrow": [32],
    "wrn_28_4": [32],
    "small_cnn": [8, 28, 32],
    "mlp": [8, 32],
}


def _build(name: str, size: int, channels: int = 3, num_classes: int = 10, **kw) -> nn.Module:
    mean = kw.pop("mean", [0.5] * channels)
    std = kw.pop("std", [0.25] * channels)
    return create_model(
        name,
        num_classes=num_classes,
        in_channels=channels,
        image_size=size,
        mean=mean,
        std=std,
    )


def test_every_registered_model_has_input_sizes() -> None:
    assert set(list_models()) == set(INPUT_SIZES)
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize(
    ("name", "size"), [(name, size) for name, sizes in INPUT_SIZES.items() for size in sizes]
)
def test_forward_shape(name: str, size: int) -> None:
    channels = 1 if size in (8, 28) else 3
    model = _build(name, size, channels=channels, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(INPUT_SIZES))
def test_structure_is_maskable(name: str) -> None:
    """Normalize comes first; only plain layers hold weights; convs (all before BN) have no bias."""
    size = INPUT_SIZES[name][0]
    model = _build(name, size)
    assert isinstance(next(iter(model.children())), Normalize)
    for module in model.modules():
        if next(module.parameters(recurse=False), None) is not None:
            assert type(module) in (nn.Conv2d, nn.Linear, nn.BatchNorm2d), type(module)
        if isinstance(module, nn.Conv2d):
            assert module.bias is None
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())


@pytest.mark.parametrize("name", list(INPUT_SIZES))
def test_normalize_is_applied(name: str) -> None:
    size = INPUT_SIZES[name][0]
    x = torch.rand(2, 3, size, size)
    torch.manual_seed(0)
    a = _build(name, size, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).eval()
    torch.manual_seed(0)
    b = _build(name, size, mean=[0.1, 0.2, 0.3], std=[0.3, 0.2, 0.1]).eval()
    # Same seed, same weights: only the normalisation differs.
    weights_a = {k: v for k, v in a.state_dict().items() if not k.startswith("normalize.")}
    weights_b = {k: v for k, v in b.state_dict().items() if not k.startswith("normalize.")}
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
        b.load_state_dict(a.state_dict())
        assert torch.allclose(a(x), b(x))


def test_normalize_layer() -> None:
    norm = Normalize([0.5, 0.25], [0.5, 0.25])
    assert norm.mean.shape == (1, 2, 1, 1)
    assert norm.std.shape == (1, 2, 1, 1)
    x = torch.rand(3, 2, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 0.25], dim=1)
    assert torch.allclose(norm(x), expected)
    with pytest.raises(ValueError, match="std > 0"):
        Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="one mean and one std"):
        Normalize([0.5, 0.5], [0.5])


def test_unknown_model_lists_available() -> None:
    with pytest.raises(ValueError, match="resnet18") as err:
        _build("resnet1800", 32)
    for name in list_models():
        assert name in str(err.value)


def test_mean_std_must_match_channels() -> None:
    with pytest.raises(ValueError, match="in_channels=3"):
        _build("small_cnn", 32, channels=3, mean=[0.5], std=[0.5])


def test_duplicate_registration_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda spec: nn.Identity())


def test_resnet18_parameter_count() -> None:
    model = _build("resnet18", 32)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


def test_vgg6_narrow_is_cpu_sized_and_fully_masked() -> None:
    """The CPU model of configs/experiments/cifar10-cpu.yaml: 3x32x32 -> 10 logits, well under
    1M parameters, and every weight layer (5 convolutions, 1 linear) under a score mask."""
    from s2ap.masking import ScoreMasking, kept_count

    torch.manual_seed(0)
    model = _build("vgg6_narrow", 32)
    assert sum(p.numel() for p in model.parameters()) == 246_682
    weights = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert len(weights) == 6
    masking = ScoreMasking(model, sparsity=0.9)
    assert set(masking.layers) == set(weights)
    masks = masking.masks()
    for name, mask in masks.items():
        assert int(mask.sum()) == kept_count(mask.numel(), 0.9), name
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(4, 3, 32, 32))
        dense = masking.to_dense()(torch.rand(4, 3, 32, 32))
    assert out.shape == dense.shape == (4, 10)


def test_wrn_28_4_parameter_count() -> None:
    model = _build("wrn_28_4", 32)
    assert sum(p.numel() for p in model.parameters()) == 5_849_050


@pytest.mark.parametrize(("name", "size"), [("resnet18", 32), ("small_cnn", 28), ("wrn_28_4", 32)])
def test_channels_last_matches_contiguous(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = _build(name, size).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, expected, atol=1e-4, rtol=1e-4)


def test_input_gradient_flows() -> None:
    """Attacks differentiate with respect to the [0, 1] input, through Normalize."""
    model = _build("small_cnn", 8, channels=1).eval()
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
