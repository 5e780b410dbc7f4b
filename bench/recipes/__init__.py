"""The training-recipe axis: how the base model of each (model, dataset, seed) is trained.

A recipe is `train(model, data, cfg, *, seed, device) -> TrainCost` that trains `model` in place; the trained model
is cached by a key of everything that changes it (model, recipe config, data fingerprint, seed), so every
compression, runtime and attack cell of that model reuses one training. `ddp` and `fedavg` launch their worker
processes through torchrun themselves and load the result back into `model`.
"""

from __future__ import annotations

from bench.registry import Registry

RECIPES: Registry = Registry("recipe", package="bench.recipes")
