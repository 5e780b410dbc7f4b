"""The compression axis: `apply(model, cfg, ctx) -> Compressed`, one small file per method.

A compression either transforms the float model (pruning, distillation, QAT fine-tuning: still a float
nn.Module) or asks the runtime to lower it (INT8, FP16: kernels and calibration are the runtime's, so the
request travels as a `Lowering` to the export stage). A chain applies its steps in order; each step's cost is
recorded. Capabilities: `dtype` (what the artifact computes in: fp32 / int8 / fp16), `must_be_last` (lowerings),
`primary` (the parameter shown bare in labels: `prune-0.5`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from bench.registry import Registry
from bench.types import CompressContext, HalfSpec, Lowering, QuantSpec, lowering_from_dict

# The shared types live in bench.types; re-exported here for plugins and users who import them from this axis.
__all__ = ["COMPRESSIONS", "CompressContext", "Compressed", "HalfSpec", "Lowering", "QuantSpec", "finetune",
           "lowering_from_dict"]  # fmt: skip

COMPRESSIONS: Registry = Registry("compression", package="bench.compressions")


@dataclasses.dataclass
class Compressed:
    model: nn.Module
    lowering: Lowering | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def finetune(model: nn.Module, ctx: CompressContext, epochs: int, lr: float, **loss: Any) -> dict[str, Any]:
    """Fine-tune `model` in place on the train split; returns the cost fields every compression records."""
    from bench.training import OptimConfig, fit

    if epochs <= 0:
        return {}
    cost = fit(
        model,
        ctx.data.x_train,
        ctx.data.y_train,
        OptimConfig(epochs=epochs, lr=lr),
        seed=ctx.seed,
        device=ctx.device,
        **loss,
    )
    model.to("cpu").eval()
    return {"finetune_s": cost.seconds, "finetune_epochs": cost.epochs, "samples_seen": cost.samples_seen}
