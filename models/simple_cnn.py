"""The small CNN of the quick start: three 3x3 convolutions and two fully connected layers."""

from __future__ import annotations

import dataclasses

from torch import nn

from bench.config import check_range
from bench.models import MODELS, ModelConfig


@dataclasses.dataclass
class SimpleCNNConfig(ModelConfig):
    width: int = 32
    hidden: int = 128
    batchnorm: bool = False  # BatchNorm after each convolution
    dropout: float = 0.0  # dropout before the last fully connected layer

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("width", self.width, lo=1)
        check_range("hidden", self.hidden, lo=1)
        check_range("dropout", self.dropout, lo=0, hi=1, hi_open=True)


@MODELS.register("simple_cnn", config=SimpleCNNConfig)
def simple_cnn(
    num_classes: int,
    in_shape: tuple[int, int, int],
    width: int = 32,
    hidden: int = 128,
    batchnorm: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """3 conv (each optionally with BatchNorm) + 2 fc (optionally with dropout between them); pools only while the
    feature map is at least 4 pixels wide, so 8x8 and 32x32 both work."""
    channels, height, width_px = in_shape
    layers: list[nn.Module] = []
    c_in = channels
    for c_out in (width, width * 2, width * 2):
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))  # padding 1 keeps the size
        layers += [nn.BatchNorm2d(c_out), nn.ReLU()] if batchnorm else [nn.ReLU()]
        if height >= 4:
            layers.append(nn.MaxPool2d(2))
            height, width_px = height // 2, width_px // 2
        c_in = c_out
    # the flattened size by arithmetic, not by a forward pass: building the model runs no operator, so it builds
    # on the meta device in microseconds (bench.preflight)
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.Flatten(),
        nn.Linear(c_in * height * width_px, hidden),
        nn.ReLU(),
        *([nn.Dropout(dropout)] if dropout else []),
        nn.Linear(hidden, num_classes),
    )
