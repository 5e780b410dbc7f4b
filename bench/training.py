"""The supervised training loop shared by recipes and by compressions that fine-tune (pruning, QAT, KD)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EpochHook = Callable[[int, nn.Module], bool]  # (epoch, 1-based; model) -> True to stop training after this epoch


@dataclasses.dataclass
class OptimConfig:
    """Optimiser and schedule; the recipe's YAML parameters."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"

    def __post_init__(self) -> None:
        from bench.config import check_range

        check_range("epochs", self.epochs, lo=0)
        check_range("batch_size", self.batch_size, lo=1)
        check_range("lr", self.lr, lo=0, lo_open=True)
        check_range("momentum", self.momentum, lo=0, hi=1, hi_open=True)
        check_range("weight_decay", self.weight_decay, lo=0)


@dataclasses.dataclass
class TrainCost:
    """What a training (or fine-tuning) cost: the training-time side of the trade-off."""

    seconds: float
    epochs: int
    samples_seen: int
    samples_per_s: float
    final_loss: float
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # recipe-specific, JSON-ready (e.g. early stop)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: OptimConfig,
    *,
    seed: int,
    device: str = "cpu",
    loss_fn: LossFn = cross_entropy,
    on_epoch_end: EpochHook | None = None,
) -> TrainCost:
    """Train `model` in place on (x, y) with `cfg`; shuffling is seeded, so the same seed gives the same weights.

    `on_epoch_end(epoch, model)` runs after each epoch (its time counts as training time); returning True stops
    training there, and `epochs` / `samples_seen` in the cost count only the epochs that ran. The hook may change
    the model's mode or weights; training mode is restored before the next epoch.
    """
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
        )
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(x) / cfg.batch_size))
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
        if cfg.schedule == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    )
    generator = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    loss = torch.tensor(float("nan"))
    start = time.perf_counter()
    epochs_run = 0
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(x), generator=generator).to(device)
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = loss_fn(model, x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        epochs_run = epoch
        if on_epoch_end is not None and on_epoch_end(epoch, model):
            break
        model.train()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval()
    seen = epochs_run * len(x)
    return TrainCost(seconds, epochs_run, seen, seen / seconds if seconds > 0 else 0.0, float(loss.detach()))


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for x in batches (CPU tensor out)."""
    outs = [model(x[i : i + batch_size]).detach().float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> float:
    return float((predict(model, x, batch_size).argmax(1) == y.cpu()).float().mean())
