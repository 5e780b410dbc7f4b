"""INT8 for PyTorch runtimes: FX graph-mode post-training quantization with the x86 backend.

torch.ao.quantization is deprecated in favour of torchao, but torchao's int8 converts nn.Linear only, and the
models here are mostly convolutions; FX quantizes Conv2d, Linear, ReLU, BatchNorm (fused) and residual adds.

PyTorch's quantized `mean` over dims (2, 3) without keepdim fails on a channels-last 1x1 map ("required rank 4
tensor to use channels_last format"), which is what quantized convolutions return when a network's global average
pool (`x.mean([2, 3])` in ShuffleNetV2 and MnasNet) sees a 32x32 input downsampled 32 times. The converted graph
computes such means with keepdim and squeezes the two dims afterwards: the same values, a kernel path that works.
A model FX cannot quantize fails with one line that names it and says what to do.
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


_SPATIAL_DIMS = {(2, 3): (3, 2), (3, 2): (3, 2), (-2, -1): (-1, -1), (-1, -2): (-1, -1)}  # dims -> squeezes


def keepdim_spatial_means(graph_module: torch.fx.GraphModule) -> int:
    """Rewrite each `mean` over dims (2, 3) without keepdim as a mean with keepdim followed by two squeezes (the
    same values; see the module docstring for the kernel it avoids). Returns how many were rewritten."""
    graph = graph_module.graph
    rewritten = 0
    for node in list(graph.nodes):
        if not (node.op == "call_method" and node.target == "mean") and not (
            node.op == "call_function" and node.target is torch.mean
        ):
            continue
        args = dict(zip(("input", "dim", "keepdim"), node.args, strict=False)) | dict(node.kwargs)
        dims = args.get("dim")
        squeezes = _SPATIAL_DIMS.get(tuple(dims)) if isinstance(dims, (list, tuple)) else None
        if squeezes is None or args.get("keepdim", False) or "dtype" in args:
            continue
        node.args, node.kwargs = (args["input"], list(dims)), {"keepdim": True}
        with graph.inserting_after(node):
            first = graph.call_method("squeeze", (node, squeezes[0]))
        with graph.inserting_after(first):
            second = graph.call_method("squeeze", (first, squeezes[1]))
        node.replace_all_uses_with(second, delete_user_cb=lambda user, first=first: user is not first)
        rewritten += 1
    if rewritten:
        graph.lint()
        graph_module.recompile()
    return rewritten


def _fx_failure(net: nn.Module, step: str, exc: Exception) -> RuntimeError:
    cause = (str(exc).strip().splitlines() or [""])[0]
    return RuntimeError(
        f"FX graph-mode INT8 of {type(net).__name__} failed while {step} ({type(exc).__name__}: {cause}); "
        "run its INT8 on the onnxruntime runtime, or exclude int8 on eager and torchscript for this model"
    )


def quantize_fx(model: nn.Module, quant: QuantSpec, calib_x: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
    """Static (calibrated) or dynamic INT8 of `model` for CPU; raises if no layer was quantized, or with one line
    naming the model if FX cannot trace, quantize or run it."""
    from torch.ao.quantization import QConfigMapping, default_dynamic_qconfig, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    start = time.perf_counter()
    model = copy.deepcopy(model).cpu().eval()
    net = getattr(model, "net", model)  # bench.models.Classifier wraps the registered network
    example = (calib_x[:1],)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notices of torch.ao are ours to track, not the user's
        step = "tracing it"
        try:
            if quant.mode == "dynamic":
                prepared = prepare_fx(model, QConfigMapping().set_global(default_dynamic_qconfig), example)
            else:
                prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example)
                step = "calibrating it"
                with torch.no_grad():
                    for i in range(0, len(calib_x), 64):
                        prepared(calib_x[i : i + 64])
            step = "converting it"
            quantized = convert_fx(prepared)
            rewritten = keepdim_spatial_means(quantized)
            step = "running the quantized model"
            with torch.no_grad():
                quantized(calib_x[:2])
        except Exception as exc:
            raise _fx_failure(net, step, exc) from exc
    layers = quantized_layer_names(quantized)
    if not layers:
        raise RuntimeError(
            f"FX graph-mode INT8 quantized no layer of {type(net).__name__}: it would run in FP32; "
            "run its INT8 on the onnxruntime runtime, or exclude int8 on eager and torchscript for this model"
        )
    meta = {
        "quantize_s": time.perf_counter() - start,
        "quantized_layers": layers,
        "backend": "x86 (FX graph mode)",
        "mode": quant.mode,
        "calibration_samples": 0 if quant.mode == "dynamic" else len(calib_x),
        "keepdim_means": rewritten,
    }
    return quantized.eval(), meta
