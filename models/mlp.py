"""A multilayer perceptron on flattened pixels."""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from bench.config import check_range
from bench.errors import ConfigError
from bench.models import MODELS, ModelConfig


@dataclasses.dataclass
class MLPConfig(ModelConfig):
    hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 128])

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.hidden:
            raise ConfigError("hidden", "needs at least one layer width")
        for i, width in enumerate(self.hidden):
            check_range(f"hidden[{i}]", width, lo=1)


@MODELS.register("mlp", config=MLPConfig)
def mlp(num_classes: int, in_shape: tuple[int, int, int], hidden: list[int] | None = None) -> nn.Module:
    """Flatten, then Linear + ReLU per hidden width, then the classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    width_in = math.prod(in_shape)
    for width in hidden or [256, 128]:
        layers += [nn.Linear(width_in, width), nn.ReLU()]
        width_in = width
    layers.append(nn.Linear(width_in, num_classes))
    return nn.Sequential(*layers)
