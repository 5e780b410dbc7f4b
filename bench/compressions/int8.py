"""`int8`: post-training quantization to 8-bit integers, lowered by the runtime (Jacob et al. CVPR 2018,
arXiv:1712.05877).

`mode: static` calibrates activation ranges on the calibration split (disjoint from eval; its size is
`calibration_size`); `mode: dynamic` quantizes weights ahead of time and activations on the fly. ONNX Runtime
gets QDQ with uint8 activations; int8 weights per-tensor by default, per-channel with `per_channel: true`. On x86
CPUs, uint8 activations select the fast u8s8 kernels (ResNet-18 CIFAR, batch 64: 3.9x faster than FP32 here,
while int8 activations with per-channel weights were slower than FP32). Eager gets PyTorch's FX graph-mode
quantization with the x86 backend (per-channel weights).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import nn

from bench.compressions import COMPRESSIONS, CompressContext, Compressed, QuantSpec
from bench.config import check_range


@dataclasses.dataclass
class Int8Config:
    mode: Literal["static", "dynamic"] = "static"
    per_channel: bool = False
    activations: Literal["uint8", "int8"] = "uint8"
    calibration_size: int | None = None  # None: the whole calibration split

    def __post_init__(self) -> None:
        check_range("calibration_size", self.calibration_size, lo=1)


def quant_spec(cfg: Int8Config, ctx: CompressContext) -> QuantSpec:
    available = len(ctx.data.x_calib)
    size = min(cfg.calibration_size or available, available)
    return QuantSpec(cfg.mode, cfg.per_channel, cfg.activations, size)


@COMPRESSIONS.register("int8", config=Int8Config, dtype="int8", must_be_last=True, primary="mode")
def int8(model: nn.Module, cfg: Int8Config, ctx: CompressContext) -> Compressed:
    """INT8 post-training quantization; the runtime calibrates and converts at export."""
    spec = quant_spec(cfg, ctx)
    return Compressed(model, lowering=spec, meta={"calibration_samples": spec.calibration_size})
