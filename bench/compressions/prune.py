"""`prune`: structured channel pruning that physically removes channels (Torch-Pruning, Fang et al., "DepGraph:
Towards Any Structural Pruning", CVPR 2023, arXiv:2301.12900).

Channels are ranked by the L1 or L2 norm of their weights, or by first-order Taylor importance (|w * dL/dw|,
Molchanov et al. CVPR 2019, data-aware: gradients of the loss on a calibration batch); coupled layers (conv -> bn
-> residual add -> next conv) are pruned together through Torch-Pruning's dependency graph, and the classifier
keeps its outputs. The result is a smaller dense model, so latency drops on dense kernels, unlike masks.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import torch_pruning as tp
from torch import nn

from bench.compressions import COMPRESSIONS, CompressContext, Compressed, finetune
from bench.config import check_range


@dataclasses.dataclass
class PruneConfig:
    ratio: float = 0.5  # fraction of channels removed per layer (or overall, with global_pruning)
    importance: Literal["l1", "l2", "taylor"] = "l1"
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


def _importance(cfg: PruneConfig) -> tp.importance.Importance:
    if cfg.importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if cfg.importance == "l1" else 2)


@COMPRESSIONS.register("prune", config=PruneConfig, dtype="fp32", primary="ratio")
def prune(model: nn.Module, cfg: PruneConfig, ctx: CompressContext) -> Compressed:
    """Structured channel pruning (L1 / L2 / Taylor) with physical removal, then optional fine-tuning."""
    example = ctx.example.to("cpu")
    model = model.to("cpu").eval()
    macs_before, params_before = tp.utils.count_ops_and_params(model, example)
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=_importance(cfg),
        pruning_ratio=cfg.ratio,
        global_pruning=cfg.global_pruning,
        ignored_layers=[classifier_layer(model)],
        round_to=cfg.round_to,
    )
    start = time.perf_counter()
    if cfg.importance == "taylor":  # data-aware: needs the loss gradients on a batch of the calibration split
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(ctx.data.x_calib[:256]), ctx.data.y_calib[:256])
        loss.backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    prune_s = time.perf_counter() - start
    macs_after, params_after = tp.utils.count_ops_and_params(model, example)
    if not (params_after < params_before and macs_after < macs_before):
        raise RuntimeError(f"pruning removed nothing: params {params_before} -> {params_after}")
    meta = {
        "params_before": int(params_before),
        "params_after": int(params_after),
        "macs_before": int(macs_before),
        "macs_after": int(macs_after),
        "prune_s": prune_s,
        **finetune(model, ctx, cfg.finetune_epochs, cfg.finetune_lr),
    }
    return Compressed(model.eval(), meta=meta)
