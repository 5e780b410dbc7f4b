"""Shared test helpers: writing suites, running the CLI in-process, tiny models for user-function tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from bench.cli import main

# A suite small enough for end-to-end tests in seconds: the MLP on digits, one compression, eager only.
TINY_SUITE: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "dataset": {"name": "digits", "eval_size": 120, "calibration_size": 32},
    "models": [{"name": "mlp", "hidden": [32]}],
    "recipes": [{"name": "standard", "epochs": 3}],
    "compressions": ["none"],
    "runtimes": ["eager"],
    "attacks": ["none", {"name": "fgsm", "eps": 0.1}],
    "measurement": {"profile": "smoke", "batch_sizes": [1, 8], "memory": True},
}


def write_suite(path: Path, data: dict[str, Any] | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(args: list[str], capsys: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def tiny_net(num_classes: int, in_shape: tuple[int, int, int], width: int = 16) -> nn.Module:
    """A user's own model factory, referenced in suites as `tests.helpers:tiny_net`."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(int(torch.tensor(in_shape).prod()), width), nn.ReLU(), nn.Linear(width, num_classes)
    )


def broken_net(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """A model whose forward raises: its cells must be recorded as failed while the run goes on."""

    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("this model is broken on purpose")

    return Broken()


class _Round(torch.autograd.Function):
    """Rounding with a zero gradient: the classic obfuscated-gradient defence (Athalye et al. 2018)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class RoundedInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Round.apply(x)


def rounded_net(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """A gradient-masked model: its input passes through a rounding step, so input gradients are zero."""
    return nn.Sequential(
        RoundedInput(),
        nn.Flatten(),
        nn.Linear(int(torch.tensor(in_shape).prod()), 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def train_simple_cnn(epochs: int = 8, width: int = 8, hidden: int = 32, frozen: bool = True):
    """(model, digits splits): a small CNN trained on digits, the shared subject of attack and compression tests.

    Deterministic for a given seed; `frozen` turns off parameter gradients (attacks need input gradients only).
    """
    from bench.config import parse_config
    from bench.datasets import load_dataset
    from bench.models import MODELS, build_model
    from bench.training import OptimConfig, fit

    data = load_dataset("digits", None, 0)
    torch.manual_seed(0)
    cfg = parse_config(MODELS.get("simple_cnn").config_cls, {"width": width, "hidden": hidden})
    model = build_model("simple_cnn", cfg, data.num_classes, data.in_shape, data.mean, data.std)
    fit(model, data.x_train, data.y_train, OptimConfig(epochs=epochs), seed=0)
    for p in model.parameters():
        p.requires_grad_(not frozen)
    return model.eval(), data
