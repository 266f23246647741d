"""Model definitions used by the built-in tasks (defined here: nothing is downloaded)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "DemoResNet", "DenseBlockNet", "InvertedResidual", "MobileNetV2Small", "VGGSmall"]


class BasicBlock(nn.Module):
    """ResNet basic block; a strided or widening block gets a 1x1 projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        identity = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(y + identity)


class DemoResNet(nn.Module):
    """A small ResNet for 28x28 grayscale digits: stem, three stages, global pool, classifier.

    ``width`` is the stem's channel count; stages use width, 2*width and 4*width channels.
    """

    def __init__(self, width: int = 32, blocks_per_stage: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages = []
        in_ch = width
        for i, out_ch in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(in_ch, out_ch, stride=2 if (i > 0 and b == 0) else 1))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MobileNetV2Small(nn.Module):
    """A MobileNetV2-style network: depthwise convs and inverted residuals."""

    def __init__(self, width: int = 16, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(width, width, 1), InvertedResidual(width, 2 * width, 2), InvertedResidual(2 * width, 2 * width, 1)
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class DenseBlockNet(nn.Module):
    """A DenseNet-style block: each layer's output is concatenated to its input."""

    def __init__(self, width: int = 16, growth: int = 8, layers: int = 3, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.dense = nn.ModuleList()
        c = width
        for _ in range(layers):
            self.dense.append(nn.Sequential(nn.Conv2d(c, growth, 3, 1, 1, bias=False), nn.BatchNorm2d(growth), nn.ReLU()))
            c += growth
        self.transition = nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.dense:
            x = torch.cat([x, layer(x)], dim=1)
        x = self.transition(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class VGGSmall(nn.Module):
    """A plain VGG-style stack of 3x3 convs and max pooling, with a two-layer classifier."""

    def __init__(self, width: int = 16, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for out in (width, width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c, out, 3, 1, 1), nn.ReLU()]
            if out != c and c != in_channels:
                layers.append(nn.MaxPool2d(2))
            c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(c, 4 * width), nn.ReLU(), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))
