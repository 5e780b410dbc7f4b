"""Types that travel between the stages and the axes: no axis owns them, every axis may use them.

A plugin imports from here (and from the core modules: registry, config, training, perturbation helpers), never from
another axis's plugin. `DataSplits` is what a dataset loader returns and what recipes, compressions and evaluation
read; a `Lowering` (INT8 or FP16) is what a compression asks of the runtime that exports it; `CompressContext` is what
a compression (and an export) may use.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Literal

import torch


@dataclasses.dataclass
class DataSplits:
    """The three splits of one dataset, with what a model needs to know about its inputs."""

    name: str
    x_train: torch.Tensor  # float32 (N, C, H, W) in [0, 1]
    y_train: torch.Tensor  # int64 (N,)
    x_calib: torch.Tensor  # calibration split (INT8 calibration), disjoint from eval
    y_calib: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    num_classes: int
    in_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per-channel mean of x_train
    std: tuple[float, ...]  # per-channel std of x_train, >= 1e-6

    def fingerprint(self) -> str:
        """sha256 hex of the name and the six tensors (dtype, shape and bytes), to key caches and records."""
        digest = hashlib.sha256(self.name.encode())
        for tensor in (self.x_train, self.y_train, self.x_calib, self.y_calib, self.x_eval, self.y_eval):
            array = tensor.detach().cpu().contiguous().numpy()
            # The header keeps e.g. a (2, 3) and a (3, 2) tensor with equal bytes apart.
            digest.update(f"|{array.dtype.str}{array.shape}|".encode())
            digest.update(memoryview(array).cast("B"))  # no copy of the data
        return digest.hexdigest()


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
    """The lowering a compress stage recorded in its meta (None: the model is exported as it is)."""
    if not data:
        return None
    return HalfSpec() if data.get("kind") == "fp16" else QuantSpec(**data)


@dataclasses.dataclass
class CompressContext:
    """What a compression or an export may use: the data splits (train for fine-tuning, calib for calibration),
    the seed, the device, and one input batch of the right shape in [0, 1]."""

    data: DataSplits
    seed: int
    device: str
    example: torch.Tensor
