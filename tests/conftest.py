"""Shared fixtures and helpers of the test suite (pytest loads this file first): writing suites, running the CLI
in-process, tiny models for user-function tests (suites name them `tests.conftest:tiny_net`), the trained model that
attack and compression tests share, and small assertions several test files make."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from bench import jsonl
from bench.cli import main
from bench.config import parse_config
from bench.errors import ConfigError

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


def tiny_suite(**changes: Any) -> dict[str, Any]:
    """A fresh copy of TINY_SUITE with the given top-level keys replaced (nothing shared with other tests)."""
    return copy.deepcopy(TINY_SUITE) | copy.deepcopy(changes)


def write_suite(path: Path, data: dict[str, Any] | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(args: list[str], capsys: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def bench_cli(args: list[Any], cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """`bench ARGS` in a fresh interpreter, as a user runs it (-P: `python -c` would put `cwd` first on the import
    path, as the console script does not); PYTHONPATH is cleared or set to `pythonpath`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-P", "-c", "import sys; from bench.cli import main; sys.exit(main(sys.argv[1:]))"]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def records(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The records of RUN_DIR/cells.jsonl by cell id."""
    return {r["cell_id"]: r for r in jsonl.read(run_dir / "cells.jsonl")}


def run_suite(root: Path, data: dict[str, Any], name: str = "run", cache: str = "cache") -> tuple[int, dict[str, Any]]:
    """`bench run` in-process on `data` (written to ROOT/NAME.yaml), into ROOT/NAME with the cache ROOT/CACHE.

    Returns the exit code and the records of cells.jsonl by cell id. Works from module-scoped fixtures (no capsys).
    """
    suite = write_suite(root / f"{name}.yaml", data)
    code = main([str(a) for a in ["run", suite, "--out", root / name, "--cache", root / cache, "--no-progress"]])
    return code, {r["cell_id"]: r for r in jsonl.read(root / name / "cells.jsonl")}


def run_suite_for_module(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any], name: str
) -> tuple[Path, dict[str, Any]]:
    """For a module-scoped fixture: `run_suite` once in a fresh folder named after `name`; fails unless it exits 0.

    Returns the folder (holding run.yaml, the run directory run/ and the cache cache/) and the records by cell id.
    """
    root = tmp_path_factory.mktemp(name)
    code, records = run_suite(root, data)
    assert code == 0, {cell_id: r.get("error") for cell_id, r in records.items() if r["status"] != "ok"}
    return root, records


def config_error(config_cls: type, params: dict[str, Any]) -> ConfigError:
    """The ConfigError that parsing `params` into `config_cls` raises (the test fails when none is raised)."""
    with pytest.raises(ConfigError) as info:
        parse_config(config_cls, params)
    return info.value


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_paths(model: nn.Module, *types: type[nn.Module]) -> set[str]:
    """Module paths of the model's layers of the given types, e.g. `net.0.3` for a Conv2d inside two Sequentials."""
    return {name for name, module in model.named_modules() if isinstance(module, types)}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests: tiny tensors gain nothing from more, and on a loaded 2-core machine
    their spin-waits made test_attacks_extra.py ~7x slower (184 s against 24 s). Request it by name."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net(num_classes: int, in_shape: tuple[int, int, int], width: int = 16) -> nn.Module:
    """A user's own model factory, referenced in suites as `tests.conftest:tiny_net`."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(int(torch.tensor(in_shape).prod()), width), nn.ReLU(), nn.Linear(width, num_classes)
    )


def broken_net(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """A model that builds and predicts (the checks before a run pass it) but whose forward raises in training: its
    cells must be recorded as failed while the run goes on."""

    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(1, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                raise RuntimeError("this model is broken on purpose")
            return self.fc(x.mean(dim=(1, 2, 3)).unsqueeze(1))

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


def build_registered_model(
    name: str,
    params: dict[str, Any],
    in_shape: tuple[int, int, int] = (1, 8, 8),
    num_classes: int = 10,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> nn.Module:
    """A registered model (or `module:function`) built as the pipeline builds it; mean and std default to 0.5 and
    0.25 per channel."""
    from bench.models import MODELS, build_model

    cfg = parse_config(MODELS.get(name).config_cls, params)
    channels = in_shape[0]
    return build_model(name, cfg, num_classes, in_shape, mean or (0.5,) * channels, std or (0.25,) * channels)


def train_simple_cnn(epochs: int = 8, width: int = 8, hidden: int = 32, frozen: bool = True):
    """(model, digits splits): a small CNN trained on digits, the shared subject of attack and compression tests.

    Deterministic for a given seed; `frozen` turns off parameter gradients (attacks need input gradients only).
    """
    from bench.datasets import load_dataset
    from bench.training import OptimConfig, fit

    data = load_dataset("digits", None, 0)
    torch.manual_seed(0)
    model = build_registered_model(
        "simple_cnn", {"width": width, "hidden": hidden}, data.in_shape, data.num_classes, data.mean, data.std
    )
    fit(model, data.x_train, data.y_train, OptimConfig(epochs=epochs), seed=0)
    for p in model.parameters():
        p.requires_grad_(not frozen)
    return model.eval(), data


def seeded(seed: int = 0) -> torch.Generator:
    """A CPU generator with a fixed seed, for attacks' random starts and restarts."""
    return torch.Generator().manual_seed(seed)


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Which samples the model classifies correctly (a boolean mask)."""
    with torch.no_grad():
        return model(x).argmax(1) == y


def eval_subset(model: nn.Module, data: Any, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, clean-correct mask) of the first `n` eval samples (all by default): the inputs of an attack test."""
    x, y = data.x_eval[:n], data.y_eval[:n]
    return x, y, correct(model, x, y)


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, clean_correct: torch.Tensor) -> float:
    """The share of all samples that were correct clean and are still correct on their adversarial version."""
    return int((correct(model, x_adv, y) & clean_correct).sum()) / len(y)


class Sleepy(nn.Module):
    """A linear model whose forward sleeps: `when="always"` hangs training, `when="batch1"` only single-sample calls
    under inference mode (the measurement worker's; evaluation uses larger batches, the MAC count no inference
    mode). For the per-cell time limit."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], sleep_s: float, when: str) -> None:
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(in_shape).prod()), num_classes)
        self.sleep_s, self.when = sleep_s, when

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # "always" sleeps in training only: the checks before a run (bench.preflight) call forward in eval mode
        if (self.when == "always" and self.training) or (x.shape[0] == 1 and torch.is_inference_mode_enabled()):
            time.sleep(self.sleep_s)
        return self.fc(x.flatten(1))


def sleepy_net(
    num_classes: int, in_shape: tuple[int, int, int], sleep_s: float = 120.0, when: str = "always"
) -> nn.Module:
    """`Sleepy` as a user model factory (`tests.conftest:sleepy_net`)."""
    return Sleepy(num_classes, in_shape, sleep_s, when)


class Delayed(nn.Module):
    """A linear model whose inference takes `delay_ms` more (a sleep under inference mode): a known slowdown."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], delay_ms: float) -> None:
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(in_shape).prod()), num_classes)
        self.delay_ms = delay_ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_inference_mode_enabled():
            time.sleep(self.delay_ms / 1e3)
        return self.fc(x.flatten(1))


def delayed_net(num_classes: int, in_shape: tuple[int, int, int], delay_ms: float = 1.0) -> nn.Module:
    """`Delayed` as a user model factory (`tests.conftest:delayed_net`)."""
    return Delayed(num_classes, in_shape, delay_ms)
