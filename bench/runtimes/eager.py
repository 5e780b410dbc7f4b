"""`eager`: the PyTorch module itself, saved whole with torch.save (the artifact a PyTorch service loads).

INT8 modules from FX quantization cannot be unpickled again (quantized convolutions break GraphModule's
re-tracing on load), so an INT8 eager artifact is serialised through TorchScript, PyTorch's documented way to
save quantized models; it runs the same quantized kernels.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.registry import NoConfig
from bench.runtimes import RUNTIMES, Exported, Runtime
from bench.runtimes.torch_int8 import quantize_fx
from bench.runtimes.torch_session import OPEN_PICKLED, OPEN_TORCHSCRIPT
from bench.types import CompressContext, HalfSpec, Lowering, QuantSpec


class HalfPrecision(nn.Module):
    """FP16 weights and activations behind FP32 inputs and outputs (what `keep_io_types` does for ONNX)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def lower_torch(model: nn.Module, lowering: Lowering, ctx: CompressContext) -> tuple[nn.Module, dict[str, Any]]:
    """Apply an INT8 or FP16 lowering to a PyTorch module (eager and TorchScript runtimes share it)."""
    if isinstance(lowering, HalfSpec):
        return HalfPrecision(model.to(ctx.device)), {"precision": "fp16"}
    return quantize_fx(model, lowering, ctx.data.x_calib[: lowering.calibration_size])


def save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Trace the model (or script it when tracing fails, e.g. on data-dependent control flow); returns which."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice is ours to track, not the user's
        try:
            module, method = torch.jit.trace(model.eval(), example, check_trace=False), "trace"
        except Exception:
            module, method = torch.jit.script(model.eval()), "script"
        module.save(str(path))
    return method


def load_torch_artifact(path: Path, fmt: str, device: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location=device).eval()
        return torch.load(path, map_location=device, weights_only=False).eval()


@RUNTIMES.register("eager", config=NoConfig)
class Eager(Runtime):
    """PyTorch eager mode; INT8 through FX quantization on CPU (quantized kernels are CPU-only)."""

    name = "eager"
    format = "torch"
    dtypes = {"cpu": ("fp32", "int8"), "cuda": ("fp32", "fp16")}
    differentiable = True

    def export(self, model: nn.Module, lowering: Lowering | None, ctx: CompressContext, workdir: Path) -> Exported:
        if isinstance(lowering, QuantSpec):
            quantized, meta = lower_torch(model, lowering, ctx)
            save_torchscript(quantized, ctx.example, workdir / "model.int8.ts")
            meta["serialization"] = "torchscript (quantized FX modules do not unpickle)"
            return Exported("torchscript", "model.int8.ts", ["model.int8.ts"], OPEN_TORCHSCRIPT, meta)
        meta: dict[str, Any] = {}
        if lowering is not None:
            model, meta = lower_torch(model, lowering, ctx)
        torch.save(model, workdir / "model.pt")
        return Exported(self.format, "model.pt", ["model.pt"], OPEN_PICKLED, meta)
