"""Where each axis's registry lives. Importing an axis module registers its built-in plugins."""

from __future__ import annotations

import importlib

from bench.registry import Registry

AXIS_MODULES = {
    "model": ("bench.models", "MODELS"),
    "dataset": ("bench.datasets", "DATASETS"),
    "recipe": ("bench.recipes", "RECIPES"),
    "compression": ("bench.compressions", "COMPRESSIONS"),
    "runtime": ("bench.runtimes", "RUNTIMES"),
    "attack": ("bench.attacks", "ATTACKS"),
}


def registry(axis: str) -> Registry:
    module_name, attribute = AXIS_MODULES[axis]
    return getattr(importlib.import_module(module_name), attribute)
