"""The compression axis: `apply(model, cfg, ctx) -> Compressed`, one small file per method.

A compression either transforms the float model (pruning: fewer channels, still a float nn.Module) or asks the
runtime to lower it (int8: calibration and quantized kernels are the runtime's, so the request travels as a
`QuantSpec` to the export stage). A chain applies its steps in order; each step's cost is recorded.
Capabilities: `dtype` (what the artifact computes in: fp32 / int8 / fp16), `must_be_last` (lowerings),
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
    quant: QuantSpec | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


from bench.compressions import int8, none, prune  # noqa: E402, F401
