"""`prune`: structured channel pruning that physically removes channels (Torch-Pruning, Fang et al. CVPR 2023).

Channels are ranked by the L1 (or L2) norm of their weights, coupled layers (conv -> bn -> add -> next conv) are
pruned together through Torch-Pruning's dependency graph, and the classifier layer keeps its outputs. The result
is a smaller dense model, so latency drops on dense kernels, unlike `torch.nn.utils.prune`'s masks.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import torch_pruning as tp
from torch import nn

from bench.compressions import COMPRESSIONS, CompressContext, Compressed
from bench.config import check_range
from bench.training import OptimConfig, fit


@dataclasses.dataclass
class PruneConfig:
    ratio: float = 0.5  # fraction of channels removed per layer
    norm: Literal["l1", "l2"] = "l1"
    global_pruning: bool = False
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    round_to: int | None = None  # keep channel counts a multiple of this (8 suits SIMD kernels)

    def __post_init__(self) -> None:
        check_range("ratio", self.ratio, lo=0, hi=1, lo_open=True, hi_open=True)
        check_range("finetune_epochs", self.finetune_epochs, lo=0)
        check_range("finetune_lr", self.finetune_lr, lo=0, lo_open=True)
        check_range("round_to", self.round_to, lo=1)


def classifier_layer(model: nn.Module) -> nn.Module:
    """The last Linear (or Conv) layer: its outputs are the classes and must not be pruned."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@COMPRESSIONS.register("prune", config=PruneConfig, dtype="fp32", primary="ratio")
def prune(model: nn.Module, cfg: PruneConfig, ctx: CompressContext) -> Compressed:
    """Structured L1/L2 channel pruning with physical removal, then optional fine-tuning."""
    example = ctx.example.to("cpu")
    model = model.to("cpu").eval()
    macs_before, params_before = tp.utils.count_ops_and_params(model, example)
    importance = tp.importance.GroupMagnitudeImportance(p=1 if cfg.norm == "l1" else 2)
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=importance,
        pruning_ratio=cfg.ratio,
        global_pruning=cfg.global_pruning,
        ignored_layers=[classifier_layer(model)],
        round_to=cfg.round_to,
    )
    start = time.perf_counter()
    pruner.step()
    prune_s = time.perf_counter() - start
    macs_after, params_after = tp.utils.count_ops_and_params(model, example)
    meta = {
        "params_before": int(params_before),
        "params_after": int(params_after),
        "macs_before": int(macs_before),
        "macs_after": int(macs_after),
        "prune_s": prune_s,
    }
    if cfg.finetune_epochs:
        optim = OptimConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr)
        cost = fit(model, ctx.data.x_train, ctx.data.y_train, optim, seed=ctx.seed, device=ctx.device)
        model.to("cpu")
        meta.update(finetune_s=cost.seconds, finetune_epochs=cost.epochs, finetune_samples=cost.samples_seen)
    return Compressed(model.eval(), meta=meta)
