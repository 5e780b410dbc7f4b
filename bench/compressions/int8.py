"""`int8`: post-training quantization to 8-bit integers, lowered by the runtime (Jacob et al. CVPR 2018,
arXiv:1712.05877).

`mode: static` calibrates activation ranges on the calibration split (disjoint from eval; its size is
`calibration_size`); `mode: dynamic` quantizes weights ahead of time and activations on the fly. ONNX Runtime
gets QDQ with uint8 activations; int8 weights per-tensor by default, per-channel with `per_channel: true`. On x86
CPUs, uint8 activations select the fast u8s8 kernels (ResNet-18 CIFAR, batch 64: 3.9x faster than FP32 here,
while int8 activations with per-channel weights were slower than FP32). Eager gets PyTorch's FX graph-mode
quantization with the x86 backend (per-channel weights).

Calibration maps the range of every activation on the calibration split to 256 levels, so a model whose outputs
there are not finite (a training that diverged) has nothing to map: that fails here, with the cause, instead of
deep inside a calibrator.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
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


def check_finite(model: nn.Module, x: torch.Tensor) -> None:
    """Raise a one-line RuntimeError when `model` gives NaN or inf logits on `x` (the calibration inputs)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = x.to(device)
    with torch.no_grad():
        bad = sum(int((~model(x[i : i + 256]).flatten(1).isfinite()).any(1).sum()) for i in range(0, len(x), 256))
    if bad:
        net = getattr(model, "net", model)  # bench.models.Classifier wraps the registered network
        raise RuntimeError(
            f"{type(net).__name__} gives NaN or inf logits on {bad} of {len(x)} calibration samples, so INT8 "
            "calibration has no range to map: its training diverged; lower the recipe's lr (or use optimizer: adamw)"
        )


@COMPRESSIONS.register("int8", config=Int8Config, dtype="int8", must_be_last=True, primary="mode")
def int8(model: nn.Module, cfg: Int8Config, ctx: CompressContext) -> Compressed:
    """INT8 post-training quantization; the runtime calibrates and converts at export."""
    spec = quant_spec(cfg, ctx)
    if spec.mode == "static":
        check_finite(model.eval(), ctx.data.x_calib[: spec.calibration_size])
    return Compressed(model, lowering=spec, meta={"calibration_samples": spec.calibration_size})
