"""The training-recipe axis: how the base model of each (model, dataset, seed) is trained.

A recipe is `train(model, data, cfg, *, seed, device) -> TrainCost` that trains `model` in place; the trained model
is cached by a key of everything that changes it (model, recipe config, data fingerprint, seed), so every
compression, runtime and attack cell of that model reuses one training. Recipes train through
`bench.training.fit`, the one supervised loop. A recipe registered with `launches_workers=True` (`ddp`, `fedavg`)
starts its own worker processes through `bench.launch` and loads the result back into `model`; such a recipe
cannot run inside another process's training (e.g. as fedavg's local step).
"""

from __future__ import annotations

from bench.registry import Registry

RECIPES: Registry = Registry("recipe", package="bench.recipes")
