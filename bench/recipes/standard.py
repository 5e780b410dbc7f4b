"""`standard`: plain supervised training with cross-entropy, SGD (Nesterov) or AdamW, cosine or constant lr."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from bench.config import check_range
from bench.recipes import RECIPES
from bench.training import OptimConfig, TrainCost, fit


@dataclasses.dataclass
class StandardConfig(OptimConfig):
    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, lo=0)
        check_range("batch_size", self.batch_size, lo=1)
        check_range("lr", self.lr, lo=0, lo_open=True)
        check_range("momentum", self.momentum, lo=0, hi=1, hi_open=True)
        check_range("weight_decay", self.weight_decay, lo=0)


@RECIPES.register("standard", config=StandardConfig)
def standard(model: nn.Module, data: Any, cfg: StandardConfig, *, seed: int, device: str) -> TrainCost:
    """Cross-entropy on the train split."""
    return fit(model, data.x_train, data.y_train, cfg, seed=seed, device=device)


@dataclasses.dataclass
class NoTrainingConfig:
    """Use the model as built (e.g. from its `checkpoint`)."""


@RECIPES.register("none", config=NoTrainingConfig)
def no_training(model: nn.Module, data: Any, cfg: NoTrainingConfig, *, seed: int, device: str) -> TrainCost:
    """No training: evaluate the model as built or loaded from its checkpoint."""
    return TrainCost(0.0, 0, 0, 0.0, float("nan"))
