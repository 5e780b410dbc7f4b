"""`qat`: quantization-aware training (Jacob et al. CVPR 2018, arXiv:1712.05877), then a real INT8 artifact.

From the trained float model: every Conv2d / Linear gets fake-quantized weights (int8, symmetric per output
channel) and fake-quantized inputs (uint8, per-tensor, ranges tracked by an exponential moving average), with
straight-through gradients, and the model is fine-tuned for `epochs`. The fake quantizers are then removed with
the weights left on the int8 grid, and the model is lowered like `int8` static with per-channel weights (ONNX
Runtime QDQ, or FX quantization for PyTorch runtimes), calibrated on the calibration split. BatchNorm is folded
into the preceding convolution first, so the fine-tuned weights are the deployed ones.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx.experimental.optimization as fx_opt
from torch import nn
from torch.nn.utils import parametrize

from bench.compressions import COMPRESSIONS, CompressContext, Compressed, QuantSpec, finetune
from bench.config import check_range


@dataclasses.dataclass
class QATConfig:
    epochs: int = 2
    lr: float = 0.005
    calibration_size: int | None = None

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, lo=1)
        check_range("lr", self.lr, lo=0, lo_open=True)
        check_range("calibration_size", self.calibration_size, lo=1)


class FakeQuantWeight(nn.Module):
    """Symmetric int8 per output channel; torch's fake-quant op passes gradients straight through."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = (w.detach().abs().flatten(1).amax(1) / 127).clamp(min=1e-8)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)


class FakeQuantActivation(nn.Module):
    """uint8 per-tensor affine over an EMA of the observed range (frozen in eval mode)."""

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = x.detach().min(), x.detach().max()
            first = torch.isinf(self.lo)
            self.lo.copy_(torch.where(first, lo, self.lo + self.momentum * (lo - self.lo)))
            self.hi.copy_(torch.where(first, hi, self.hi + self.momentum * (hi - self.hi)))
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)  # zero must be representable
        scale = float(((hi - lo) / 255).clamp(min=1e-8))
        zero = int(torch.clamp(torch.round(-lo / scale), 0, 255))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def _input_hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (module.input_fake_quant(args[0]), *args[1:])


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Conv + BatchNorm folded into one Conv (eval-mode statistics), via torch.fx."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model
    return fx_opt.fuse(model.eval(), inplace=False)


@COMPRESSIONS.register("qat", config=QATConfig, dtype="int8", must_be_last=True)
def qat(model: nn.Module, cfg: QATConfig, ctx: CompressContext) -> Compressed:
    """Fine-tune with fake-quantized weights and activations, then lower to INT8 (per-channel weights)."""
    model = fold_batchnorm(model.cpu())
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = []
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", FakeQuantWeight())
        layer.input_fake_quant = FakeQuantActivation()
        hooks.append(layer.register_forward_pre_hook(_input_hook))
    cost = finetune(model, ctx, cfg.epochs, cfg.lr)
    for layer, hook in zip(layers, hooks, strict=True):
        hook.remove()
        del layer.input_fake_quant
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)  # weights on the int8 grid
    available = len(ctx.data.x_calib)
    spec = QuantSpec("static", True, "uint8", min(cfg.calibration_size or available, available))
    meta = {"fake_quantized_layers": len(layers), "calibration_samples": spec.calibration_size, **cost}
    return Compressed(model.eval(), lowering=spec, meta=meta)
