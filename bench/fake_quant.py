"""Fake quantization with straight-through gradients, shared by QAT (training through int8 rounding) and the
straight-through twin that attacks INT8 artifacts (BPDA, Athalye et al. 2018): the same int8 grid in both.

Weights: symmetric int8 per output channel. Inputs of each Conv2d / Linear: uint8 per-tensor affine over an
exponential moving average of the observed range (momentum 1.0: the last batch's range). BatchNorm is folded into
the preceding convolution first, so the fake-quantized weights are the ones an INT8 runtime deploys.
"""

from __future__ import annotations

import torch
import torch.fx.experimental.optimization as fx_opt
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle


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


def add_fake_quant(model: nn.Module, momentum: float = 0.01) -> list[tuple[nn.Module, RemovableHandle]]:
    """Fake-quantize the weights and inputs of every Conv2d / Linear of `model` in place; returns what
    `remove_fake_quant` needs to take it off again."""
    added = []
    for layer in [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
        parametrize.register_parametrization(layer, "weight", FakeQuantWeight())
        layer.input_fake_quant = FakeQuantActivation(momentum)
        added.append((layer, layer.register_forward_pre_hook(_input_hook)))
    return added


def remove_fake_quant(added: list[tuple[nn.Module, RemovableHandle]]) -> None:
    """Take the fake quantizers off, leaving each weight on its int8 grid."""
    for layer, hook in added:
        hook.remove()
        del layer.input_fake_quant
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)


def straight_through_twin(float_twin: nn.Module, calib_x: torch.Tensor) -> nn.Module:
    """A copy of the float model with int8 fake-quantized weights and activations (activation ranges from one pass
    over the calibration split), for gradient attacks on INT8 targets that have no gradients of their own."""
    import copy

    twin = fold_batchnorm(copy.deepcopy(float_twin).cpu())
    add_fake_quant(twin, momentum=1.0)  # one calibration pass sets min / max
    twin.train()
    with torch.no_grad():
        twin(calib_x)
    return twin.eval()
