"""CIFAR-style networks for 32x32 inputs, written here (torchvision has none).

ResNet-20/32/44/56/110 follow He et al. 2016 (section 4.2): three stages of 16, 32 and
64 channels, n BasicBlocks each (depth = 6n + 2). Downsampling shortcuts are 1x1
convolutions with BatchNorm ("option B"): unlike zero-padding shortcuts they are
ordinary layers that the dependency graph can prune.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from secateurs.errors import InvalidRequest


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise InvalidRequest(f"CIFAR ResNet depth must be 6n+2, got {depth}", field="model.arch_kwargs")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = width
        self.layer1 = self._stage(width, n, 1)
        self.layer2 = self._stage(width * 2, n, 2)
        self.layer3 = self._stage(width * 4, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 4, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class CifarVGG(nn.Module):
    """VGG-16 with BatchNorm for 32x32 inputs (five poolings leave 1x1x512)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, width: int = 16) -> nn.Module:
        return CifarResNet(depth, num_classes=num_classes, width=width)

    build.__name__ = f"resnet{depth}"
    return build


ZOO: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": _resnet(d) for d in (20, 32, 44, 56, 110)},
    "vgg16_bn": lambda num_classes=10: CifarVGG(num_classes=num_classes),
}
