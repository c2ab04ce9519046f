"""The networks S2AP prunes, registered by name (:mod:`s2ap.architectures`).

Every model starts with a :class:`Normalize` layer. Inputs stay in ``[0, 1]`` everywhere in the
project because attacks (PGD, AutoAttack) define their epsilon-balls in pixel space; the per-channel
normalisation therefore has to live inside the model, and its constants travel with the state dict.

The networks use plain ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` so that
:mod:`s2ap.masking` can swap the conv/linear layers for score-masked ones in place. Convolutions
followed by batch norm have no bias (the norm's shift makes it redundant, and a bias would be one
more prunable tensor with nothing to learn).

The CIFAR definitions follow the code of HYDRA, HARP and RobustBench, so parameter counts and
sparsities are comparable with the papers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# Builders are added to (and looked up in) the registry by name; these names are re-exported,
# so that a model is made and registered from here as before.
from s2ap.architectures import InputSpec, create_model, list_models, register_model

__all__ = [
    "InputSpec",
    "Normalize",
    "create_model",
    "list_models",
    "register_model",
]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the first layer of every model.

    ``mean`` and ``std`` are persistent buffers of shape ``[1, C, 1, 1]``: they move with the model
    between devices and are saved in (and restored from) its state dict.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.shape != std_t.shape or mean_t.numel() == 0:
            raise ValueError(
                f"Normalize needs one mean and one std per channel, got mean={list(mean)} "
                f"and std={list(std)}"
            )
        if not bool((std_t > 0).all()):
            raise ValueError(f"Normalize needs std > 0 in every channel, got std={list(std)}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = [round(v, 4) for v in self.mean.flatten().tolist()]
        std = [round(v, 4) for v in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}"


# --------------------------------------------------------------------------------------------------
# ResNet-18, CIFAR variant (HYDRA / HARP / kuangliu): 3x3 stride-1 stem, no max-pool.


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with BasicBlocks for small images (the CIFAR variant used by HYDRA and HARP)."""

    def __init__(self, num_blocks: Sequence[int], spec: InputSpec) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.conv1 = nn.Conv2d(spec.in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        in_planes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            strides = [1 if i == 0 else 2] + [1] * (blocks - 1)
            stage = []
            for stride in strides:
                stage.append(_BasicBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        # Adaptive pooling equals the original avg_pool2d(4) at 32x32 and tolerates other sizes.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))


@register_model("resnet18")
def resnet18(spec: InputSpec) -> nn.Module:
    """CIFAR ResNet-18 (11.17M parameters for 10 classes), for 32x32 inputs."""
    return CifarResNet((2, 2, 2, 2), spec)


# --------------------------------------------------------------------------------------------------
# VGG-16 with batch norm, CIFAR variant: five conv stages, one linear classifier on 512 features.

_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class CifarVGG(nn.Module):
    """VGG with batch norm for 32x32 inputs (the five max-pools leave a 1x1 map of 512 channels)."""

    def __init__(self, cfg: Sequence[int | str], spec: InputSpec) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        layers: list[nn.Module] = []
        channels = spec.in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [
                    nn.Conv2d(channels, v, 3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.features(self.normalize(x))
        return self.classifier(torch.flatten(self.avgpool(out), 1))


@register_model("vgg16_bn")
def vgg16_bn(spec: InputSpec) -> nn.Module:
    """CIFAR VGG-16 with batch norm, for 32x32 inputs."""
    return CifarVGG(_VGG16_CFG, spec)


# A CPU-sized VGG for CIFAR studies on 2 cores (configs/experiments/cifar10-cpu.yaml). Chosen by
# measurement (benchmarks/cifar_cpu.py): on CPU the cost of a PGD step is dominated by the layers
# at full resolution, so the net stays narrow there (16 channels at 32x32) and puts its capacity
# at 4x4, where two 128-channel convolutions hold 2/3 of the weights for ~18% more time per
# image than a single one. Doubling the 32x32 width cost 1.8x; a narrow ResNet-8 (16-32-64) 2.7x.
_VGG6_NARROW_CFG: tuple[int | str, ...] = (16, "M", 32, "M", 64, "M", 128, 128)


@register_model("vgg6_narrow")
def vgg6_narrow(spec: InputSpec) -> nn.Module:
    """Narrow VGG with batch norm, 5 convolutions and 1 linear layer (246,682 parameters for 10
    classes), for 32x32 inputs on a CPU: 16-32-64 channels with a max-pool after each, then two
    128-channel convolutions at 4x4, global average pool, linear."""
    return CifarVGG(_VGG6_NARROW_CFG, spec)


# --------------------------------------------------------------------------------------------------
# WideResNet (Zagoruyko & Komodakis), pre-activation blocks, as in RobustBench / TRADES / HARP.


class _WideBasic(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.shortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        # Identity blocks add the raw input; projection blocks project the activated input.
        skip = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + skip


class WideResNet(nn.Module):
    """WideResNet-``depth``-``widen_factor`` for 32x32 inputs (RobustBench definition)."""

    def __init__(self, depth: int, widen_factor: int, spec: InputSpec) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.normalize = Normalize(spec.mean, spec.std)
        self.conv1 = nn.Conv2d(spec.in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        blocks = []
        for i, stride in enumerate((1, 2, 2)):
            stage = [
                _WideBasic(
                    widths[i] if j == 0 else widths[i + 1], widths[i + 1], stride if j == 0 else 1
                )
                for j in range(n)
            ]
            blocks.append(nn.Sequential(*stage))
        self.block1, self.block2, self.block3 = blocks
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], spec.num_classes)
        # RobustBench initialisation (He-normal, fan-out), so results match published WRNs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.avgpool(out), 1))


@register_model("wrn_28_4")
def wrn_28_4(spec: InputSpec) -> nn.Module:
    """WideResNet-28-4 (5.85M parameters for 10 classes), for 32x32 inputs."""
    return WideResNet(28, 4, spec)


# --------------------------------------------------------------------------------------------------
# Small networks for the CPU: tests, the quickstart on 8x8 digits, 28x28 images.


class SmallCNN(nn.Module):
    """Two conv layers and a two-layer head; works for any input of at least 4x4 pixels.

    Sized so that a 2-core CPU trains it adversarially (PGD) on ~1,400 8x8 digits in a few
    seconds per epoch. The stride-2 second conv halves the map; the adaptive pool fixes the head's
    input at 64x4x4 whatever the image size (identity for 8x8 digits).
    """

    def __init__(
        self,
        spec: InputSpec,
        *,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.features = nn.Sequential(
            nn.Conv2d(spec.in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Linear(64 * 4 * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, spec.num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(self.features(self.normalize(x)))
        return self.classifier(torch.flatten(out, 1))


@register_model("small_cnn")
def small_cnn(spec: InputSpec) -> nn.Module:
    """Small CNN for 8x8 digits, 28x28 and 32x32 images (~150k parameters)."""
    return SmallCNN(spec)


class MLP(nn.Module):
    """Flatten and two hidden ReLU layers; the input size is fixed by ``image_size``."""

    def __init__(
        self,
        spec: InputSpec,
        *,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.flatten = nn.Flatten()
        self.net = nn.Sequential(
            nn.Linear(spec.in_channels * spec.image_size**2, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, spec.num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.flatten(self.normalize(x)))


@register_model("mlp")
def mlp(spec: InputSpec) -> nn.Module:
    """Two-hidden-layer perceptron (256 units each) for ``in_channels x image_size^2`` inputs."""
    return MLP(spec)
