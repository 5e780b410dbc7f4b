"""`standard`: plain supervised training with cross-entropy, SGD (Nesterov) or AdamW, cosine or constant lr."""

from __future__ import annotations

import dataclasses

from torch import nn

from bench.recipes import RECIPES
from bench.training import OptimConfig, TrainCost, fit
from bench.types import DataSplits


@dataclasses.dataclass
class StandardConfig(OptimConfig):
    """Optimiser and schedule (range checks in OptimConfig)."""


@RECIPES.register("standard", config=StandardConfig)
def standard(model: nn.Module, data: DataSplits, cfg: StandardConfig, *, seed: int, device: str) -> TrainCost:
    """Cross-entropy on the train split."""
    return fit(model, data.x_train, data.y_train, cfg, seed=seed, device=device)


@dataclasses.dataclass
class NoTrainingConfig:
    """Use the model as built (e.g. from its `checkpoint`)."""


@RECIPES.register("none", config=NoTrainingConfig)
def no_training(model: nn.Module, data: DataSplits, cfg: NoTrainingConfig, *, seed: int, device: str) -> TrainCost:
    """No training: evaluate the model as built or loaded from its checkpoint."""
    return TrainCost(0.0, 0, 0, 0.0, float("nan"))
