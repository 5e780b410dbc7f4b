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
from bench.runtimes import RUNTIMES, Exported, Predictor, Runtime
from bench.runtimes.torch_int8 import quantize_fx


def save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice is ours to track, not the user's
        torch.jit.trace(model.eval(), example.cpu(), check_trace=False).save(str(path))


def load_torch_artifact(path: Path, fmt: str, device: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location=device).eval()
        return torch.load(path, map_location=device, weights_only=False).eval()


@RUNTIMES.register("eager", config=NoConfig)
class Eager(Runtime):
    """PyTorch eager mode; INT8 through FX quantization on CPU (quantized kernels are CPU-only)."""

    format = "torch"
    dtypes = {"cpu": ("fp32", "int8"), "cuda": ("fp32", "fp16")}
    differentiable = True

    def export(self, model: nn.Module, quant: Any, ctx: Any, workdir: Path) -> Exported:
        if quant is not None:
            quantized, meta = quantize_fx(model, quant, ctx.data.x_calib[: quant.calibration_size])
            save_torchscript(quantized, ctx.example, workdir / "model.int8.ts")
            meta["serialization"] = "torchscript (quantized FX modules do not unpickle)"
            return Exported("torchscript", "model.int8.ts", ["model.int8.ts"], meta)
        torch.save(model, workdir / "model.pt")
        return Exported(self.format, "model.pt", ["model.pt"], {})

    def predictor(self, workdir: Path, exported: Exported, device: str, threads: int | None) -> Predictor:
        model = load_torch_artifact(workdir / exported.main_file, exported.format, device)
        quantized = bool(exported.meta.get("quantized_layers"))

        @torch.no_grad()
        def run(x: torch.Tensor) -> torch.Tensor:
            return model(x.to(device)).float().cpu()

        # INT8 kernels have no input gradients: no module is offered for white-box attacks
        return Predictor(run, None if quantized else model)
