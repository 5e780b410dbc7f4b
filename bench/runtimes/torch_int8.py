"""INT8 for PyTorch runtimes: FX graph-mode post-training quantization with the x86 backend.

torch.ao.quantization is deprecated in favour of torchao, but torchao's int8 converts nn.Linear only, and the
models here are mostly convolutions; FX quantizes Conv2d, Linear, ReLU, BatchNorm (fused) and residual adds.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import torch
from torch import nn

from bench.types import QuantSpec


def quantized_layer_names(model: nn.Module) -> list[str]:
    """Names of modules that run INT8 kernels (torch.ao.nn.quantized / intrinsic.quantized)."""
    return [
        name
        for name, module in model.named_modules()
        if type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
    ]


def quantize_fx(model: nn.Module, quant: QuantSpec, calib_x: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
    """Static (calibrated) or dynamic INT8 of `model` for CPU; raises if no layer was quantized."""
    from torch.ao.quantization import QConfigMapping, default_dynamic_qconfig, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    start = time.perf_counter()
    model = copy.deepcopy(model).cpu().eval()
    example = (calib_x[:1],)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notices of torch.ao are ours to track, not the user's
        if quant.mode == "dynamic":
            prepared = prepare_fx(model, QConfigMapping().set_global(default_dynamic_qconfig), example)
        else:
            prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example)
            with torch.no_grad():
                for i in range(0, len(calib_x), 64):
                    prepared(calib_x[i : i + 64])
        quantized = convert_fx(prepared)
    layers = quantized_layer_names(quantized)
    if not layers:
        raise RuntimeError("INT8 quantization produced no quantized layer: the model would run in FP32")
    meta = {
        "quantize_s": time.perf_counter() - start,
        "quantized_layers": layers,
        "backend": "x86 (FX graph mode)",
        "mode": quant.mode,
        "calibration_samples": 0 if quant.mode == "dynamic" else len(calib_x),
    }
    return quantized.eval(), meta
