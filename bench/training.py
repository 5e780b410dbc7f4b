"""The one supervised training loop (`fit`) and the one optimiser/schedule factory (`make_optimizer`).

Every training goes through `fit`: the `standard` and adversarial recipes (through `loss_fn` and `on_epoch_end`),
each rank of `ddp` and each client of `fedavg` (through the recipe it runs locally), and the compressions that
fine-tune (pruning, QAT, KD). What a data-parallel rank changes, the order of the samples and the scaling of the
loss, is a `BatchPlan` argument, so a change to the loop reaches every user.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol

import torch
from torch import nn

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EpochHook = Callable[[int, nn.Module], bool]  # (epoch, 1-based; model) -> True to stop training after this epoch
Batch = tuple[torch.Tensor, float | None]  # (sample indices, factor on the step's loss; None: the loss as it is)


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
    # training-time augmentation of image batches: a random crop of the image padded by `crop_padding` zeros on
    # each side, and/or a horizontal flip with probability 1/2 (the CIFAR recipe of He et al. 2016)
    augment: Literal["none", "crop", "flip", "crop_flip"] = "none"
    crop_padding: int = 4

    def __post_init__(self) -> None:
        from bench.config import check_range

        check_range("crop_padding", self.crop_padding, lo=0)
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
    # Per epoch: {"epoch", "loss" (mean of the epoch's step losses), "accuracy" (of the training batches, as the
    # model was while it took each step)}: a few numbers per epoch, so that the report can chart the training.
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def summed_cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch: 0, not NaN, for an empty batch (a data-parallel rank's empty slice)."""
    return nn.functional.cross_entropy(model(x), y, reduction="sum")


class BatchPlan(Protocol):
    """Which samples each step trains on and how its loss is scaled: what data-parallel ranks change in `fit`."""

    def __len__(self) -> int:
        """Steps per epoch."""
        ...

    def batches(self, epoch: int) -> Iterator[Batch]:
        """The steps of epoch `epoch` (0-based; `fit` asks for the epochs in order)."""
        ...


class ShuffledBatches:
    """One seeded generator reshuffles the samples each epoch; consecutive `batch_size` runs of it are the steps.

    The generator carries over between epochs, so a plan serves one training run. The loss is used as it is. The
    permutation moves to `device` once per epoch, not once per step.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, device: str = "cpu") -> None:
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return max(1, math.ceil(self.n / self.batch_size))

    def batches(self, epoch: int) -> Iterator[Batch]:
        order = torch.randperm(self.n, generator=self.generator).to(self.device)
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size], None


def make_optimizer(
    params: list[nn.Parameter], cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """`cfg`'s optimiser over `params` and its schedule over `total_steps` steps (the scheduler steps per batch)."""
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
        )
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total_steps))
        if cfg.schedule == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    )
    return opt, sched


HISTORY_SAMPLES = 512  # the training samples whose accuracy each epoch's history entry records


@torch.no_grad()
def _train_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Accuracy on the first HISTORY_SAMPLES training samples in eval mode (None unless y holds class indices):
    one small forward pass per epoch, which changes neither the weights nor the random streams."""
    if y.ndim != 1 or y.dtype.is_floating_point or len(x) == 0:
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x[:HISTORY_SAMPLES])
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        return None
    return float((logits.argmax(1) == y[:HISTORY_SAMPLES]).float().mean())


def batch_augmenter(cfg: OptimConfig, x: torch.Tensor, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The recipe's `augment` as a function of a batch (identity for "none"), drawing from its own generator seeded
    by `seed`: the same seed gives the same crops and flips, and the model's own random streams are untouched."""
    kind = getattr(cfg, "augment", "none")
    if kind == "none":
        return lambda batch: batch
    if x.ndim != 4:
        raise ValueError(f"augment '{kind}' needs image batches (N, C, H, W); this data set has shape {tuple(x.shape)}")
    crop, flip = "crop" in kind, "flip" in kind
    pad = cfg.crop_padding
    generator = torch.Generator().manual_seed(seed)

    def augment(batch: torch.Tensor) -> torch.Tensor:
        n, c, h, w = batch.shape
        out = batch
        if crop and pad:
            dy, dx = (torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(batch.device) for _ in range(2))
            padded = nn.functional.pad(batch, (pad, pad, pad, pad))
            rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]
            samples = torch.arange(n, device=batch.device)[:, None, None, None]
            channels = torch.arange(c, device=batch.device)[None, :, None, None]
            out = padded[samples, channels, rows, cols]
        if flip:
            mirrored = (torch.rand(n, generator=generator) < 0.5).to(batch.device)
            out = torch.where(mirrored[:, None, None, None], out.flip(-1), out)
        return out

    return augment


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
    plan: BatchPlan | None = None,
) -> TrainCost:
    """Train `model` in place on (x, y) with `cfg`; the same seed (or plan) gives the same weights.

    `plan` picks each step's samples and scales its loss; the default, `ShuffledBatches(len(x), cfg.batch_size,
    seed=seed, device=device)`, is single-process training (a data-parallel rank passes its slice of the global
    batches instead). `on_epoch_end(epoch, model)` runs after each epoch (its time counts as training time);
    returning True stops training there, and `epochs` / `samples_seen` in the cost count only the epochs that ran.
    The hook may change the model's mode or weights; training mode is restored before the next epoch.
    `final_loss` is the last step's loss as the plan scaled it.
    """
    model.to(device).train()
    single = plan is None
    plan = plan if plan is not None else ShuffledBatches(len(x), cfg.batch_size, seed=seed, device=device)
    opt, sched = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg, cfg.epochs * len(plan))
    x, y = x.to(device), y.to(device)
    augment = batch_augmenter(cfg, x, seed)
    loss = torch.tensor(float("nan"))
    start = time.perf_counter()
    epochs_run = 0
    history: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        # Summed on the device and read once per epoch: no host sync per step.
        loss_sum, steps = torch.zeros((), device=device), 0
        for idx, scale in plan.batches(epoch - 1):
            idx = idx.to(device)  # a no-op for the default plan's indices
            loss = loss_fn(model, augment(x[idx]), y[idx])
            if scale is not None:
                loss = loss * scale
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            steps += 1
        epochs_run = epoch
        mean = float(loss_sum) / steps if steps else float("nan")
        entry = {"epoch": epoch, "loss": round(mean, 6) if math.isfinite(mean) else None}
        # Single-process training only: a data-parallel rank's extra forward could take part in collectives.
        if single and (accuracy := _train_accuracy(model, x, y)) is not None:
            entry["train_accuracy"] = round(accuracy, 4)
        history.append(entry)
        if on_epoch_end is not None and on_epoch_end(epoch, model):
            break
        model.train()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.eval()
    seen = epochs_run * len(x)
    rate = seen / seconds if seconds > 0 else 0.0
    return TrainCost(seconds, epochs_run, seen, rate, float(loss.detach()), history=history)
