"""The small CNN of the quick start: three 3x3 convolutions and two fully connected layers."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bench.config import check_range
from bench.models import MODELS, ModelConfig


@dataclasses.dataclass
class SimpleCNNConfig(ModelConfig):
    width: int = 32
    hidden: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("width", self.width, lo=1)
        check_range("hidden", self.hidden, lo=1)


@MODELS.register("simple_cnn", config=SimpleCNNConfig)
def simple_cnn(num_classes: int, in_shape: tuple[int, int, int], width: int = 32, hidden: int = 128) -> nn.Module:
    """3 conv + 2 fc; pools only while the feature map is at least 4 pixels wide, so 8x8 and 32x32 both work."""
    channels, height, _ = in_shape
    layers: list[nn.Module] = []
    c_in, size = channels, height
    for c_out in (width, width * 2, width * 2):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
        if size >= 4:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c_in = c_out
    features = nn.Sequential(*layers)
    with torch.no_grad():
        flat = features(torch.zeros(1, *in_shape)).numel()
    return nn.Sequential(
        features,
        nn.Flatten(),
        nn.Linear(flat, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
