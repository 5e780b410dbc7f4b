"""ResNet-18 with the CIFAR-style stem (3x3 convolution, stride 1, no max-pool), He et al. 2016."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bench.config import check_range
from bench.models import MODELS, ModelConfig


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...], num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = width
        for stage, n_blocks in enumerate(layers):
            c_out = width * 2**stage
            for i in range(n_blocks):
                blocks.append(BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


@dataclasses.dataclass
class ResNetConfig(ModelConfig):
    width: int = 64  # 64 is the paper's; tests use 8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("width", self.width, lo=1)


@MODELS.register("resnet18", config=ResNetConfig)
def resnet18(num_classes: int, in_shape: tuple[int, int, int], width: int = 64) -> nn.Module:
    """ResNet-18 for small images: [2, 2, 2, 2] basic blocks, 3x3 stem."""
    return ResNet((2, 2, 2, 2), num_classes, in_shape[0], width)
