"""The compression axis: `apply(model, cfg, ctx) -> Compressed`, one small file per method.

A compression either transforms the float model (pruning, distillation, QAT fine-tuning: still a float
nn.Module) or asks the runtime to lower it (INT8, FP16: kernels and calibration are the runtime's, so the
request travels as a `Lowering` to the export stage). A chain applies its steps in order; each step's cost is
recorded. Capabilities: `dtype` (what the artifact computes in: fp32 / int8 / fp16), `must_be_last` (lowerings),
`primary` (the parameter shown bare in labels: `prune-0.5`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from bench.registry import Registry

COMPRESSIONS: Registry = Registry("compression")


@dataclasses.dataclass
class QuantSpec:
    """An INT8 lowering request, realised by the runtime at export with the calibration split."""

    mode: Literal["static", "dynamic"] = "static"
    per_channel: bool = False
    activations: Literal["uint8", "int8"] = "uint8"
    calibration_size: int | None = None
    kind: str = "int8"


@dataclasses.dataclass
class HalfSpec:
    """An FP16 lowering request (weights and activations in half precision, inputs and outputs in FP32)."""

    kind: str = "fp16"


Lowering = QuantSpec | HalfSpec


def lowering_from_dict(data: dict[str, Any] | None) -> Lowering | None:
    if not data:
        return None
    return HalfSpec() if data.get("kind") == "fp16" else QuantSpec(**data)


@dataclasses.dataclass
class CompressContext:
    """What a compression may use: the data splits (train for fine-tuning, calib for calibration), seed, device."""

    data: Any
    seed: int
    device: str
    example: torch.Tensor  # one input batch of the right shape, in [0, 1]


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


from bench.compressions import fp16, int8, kd, none, prune, prune_unstructured, qat  # noqa: E402, F401
