"""`onnxruntime`: the model exported with torch.onnx and run by ONNX Runtime; INT8 as static QDQ.

INT8 follows ONNX Runtime's documented path: `quant_pre_process` (shape inference and graph optimisation, which
`quantize_static` needs on graphs from the torch.export-based exporter), then `quantize_static` in QDQ format with
a calibration reader over the calibration split. A result without quantized operators fails the cell.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from bench.config import check_range
from bench.runtimes import RUNTIMES, Exported, Runtime
from bench.runtimes.ort_session import ort_providers
from bench.types import CompressContext, HalfSpec, Lowering, QuantSpec

log = logging.getLogger(__name__)

OPENER = "bench.runtimes.ort_session:open_onnx"  # opens the artifact without importing torch (measurement worker)


@dataclasses.dataclass
class OnnxRuntimeConfig:
    # dynamo: torch.export-based exporter (PyTorch's default, needs onnxscript);
    # torchscript: the older tracer, deprecated but 10-30x faster to export small models
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    opset: int = 18
    # execution providers in priority order (CPU is always the fallback); none: by device
    providers: list[Literal["cpu", "cuda", "tensorrt"]] | None = None
    intra_op_threads: int | None = None  # none: the measurement's thread count
    inter_op_threads: int = 1
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"

    def __post_init__(self) -> None:
        check_range("opset", self.opset, lo=13)
        check_range("intra_op_threads", self.intra_op_threads, lo=1)
        check_range("inter_op_threads", self.inter_op_threads, lo=1)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, exporter: str, opset: int) -> None:
    """FP32 ONNX with a dynamic batch dimension; input 'input', output 'logits'."""
    model = model.cpu().eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # exporter chatter and deprecation notices stay out of the user's way
        if exporter == "dynamo":
            torch.onnx.export(
                model,
                (example.cpu(),),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                opset_version=opset,
                verbose=False,
            )
        else:
            torch.onnx.export(
                model,
                (example.cpu(),),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )


def check_onnx(path: Path) -> dict[str, Any]:
    """The ONNX checker's verdict on the artifact (a malformed graph raises here, failing the cell with the
    checker's message) and the name of its input's batch dimension (a name: dynamic; a number: fixed)."""
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path: also models with external weights or over 2 GB
    except onnx.checker.ValidationError as exc:
        raise RuntimeError(f"the ONNX checker rejects {path.name}: {str(exc).strip().splitlines()[0]}") from exc
    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return {"onnx_checker": "passed", "batch_dim": dim.dim_param or dim.dim_value}


def count_ops(path: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(collections.Counter(node.op_type for node in graph.node))


class _CalibrationReader:
    """Feeds the calibration split to ONNX Runtime's calibrator in batches."""

    def __init__(self, x: np.ndarray, input_name: str, batch_size: int = 32) -> None:
        self._batches = iter([{input_name: x[i : i + batch_size]} for i in range(0, len(x), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # not needed by MinMax calibration
        pass


def quantize_onnx(fp32: Path, out: Path, quant: QuantSpec, calib_x: np.ndarray) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    start = time.perf_counter()
    pre = out.with_name("preprocessed.onnx")
    quant_pre_process(str(fp32), str(pre))
    if quant.mode == "dynamic":
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=quant.per_channel)
    else:
        reader = type("Reader", (_CalibrationReader, CalibrationDataReader), {})(calib_x, "input")
        quantize_static(
            str(pre),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=quant.per_channel,
            activation_type=QuantType.QUInt8 if quant.activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
    pre.unlink(missing_ok=True)
    ops = count_ops(out)
    quantized = sum(
        n
        for op, n in ops.items()
        if op
        in ("DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")
    )
    if not quantized:
        raise RuntimeError("ONNX Runtime quantization produced no quantized operator: the model would run in FP32")
    return {
        "quantize_s": time.perf_counter() - start,
        "format": "QDQ" if quant.mode == "static" else "dynamic (integer ops)",
        "activations": quant.activations,
        "weights": "int8 per-channel" if quant.per_channel else "int8 per-tensor",
        "calibration_samples": 0 if quant.mode == "dynamic" else len(calib_x),
        "quantized_ops": quantized,
        "op_counts": ops,
    }


def sort_nodes(graph: Any) -> None:
    """Put `graph`'s nodes in topological order, in place (ONNX requires it; ONNX Runtime tolerates its absence).

    Kahn's algorithm, stable: each round places, in their current order, the nodes whose inputs are all known
    (graph inputs, initializers, outputs of placed nodes). Nodes that never become ready (names from an outer
    scope) keep their order at the end, for the checker to report."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [all(name in known for name in n.input) for n in pending]
        if not any(ready):
            break
        for node, is_ready in zip(pending, ready, strict=True):
            if is_ready:
                known.update(node.output)
                ordered.append(node)
        pending = [n for n, is_ready in zip(pending, ready, strict=True) if not is_ready]
    ordered += pending
    nodes = [type(n)() for n in ordered]
    for copy, node in zip(nodes, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(nodes)


def convert_fp16(fp32: Path, out: Path) -> dict[str, Any]:
    """FP16 weights and compute, FP32 inputs and outputs (`keep_io_types`), as ONNX Runtime's tooling does it."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    start = time.perf_counter()
    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    sort_nodes(model.graph)  # the converter appends the input casts after their consumers: invalid ONNX
    onnx.save(model, str(out))
    return {"precision": "fp16", "convert_s": time.perf_counter() - start, "keep_io_types": True}


@RUNTIMES.register("onnxruntime", config=OnnxRuntimeConfig)
class OnnxRuntime(Runtime):
    """ONNX Runtime, CPU execution provider (CUDA provider with device cuda when installed)."""

    name = "onnxruntime"
    format = "onnx"
    dtypes = {"cpu": ("fp32", "int8", "fp16"), "cuda": ("fp32", "int8", "fp16")}
    differentiable = False

    def unavailable(self, device: str) -> str | None:
        import onnxruntime as ort

        missing = [p for p in ort_providers(self.cfg.providers, device) if p not in ort.get_available_providers()]
        if missing:
            return (
                f"ONNX Runtime here has no {', '.join(missing)} (available: {', '.join(ort.get_available_providers())})"
            )
        return None

    def session_options(self) -> dict[str, Any]:
        return {
            k: getattr(self.cfg, k)
            for k in ("providers", "intra_op_threads", "inter_op_threads", "graph_optimization", "execution_mode")
        }

    def export(self, model: nn.Module, lowering: Lowering | None, ctx: CompressContext, workdir: Path) -> Exported:
        staging = workdir / "staging"
        staging.mkdir()
        fp32 = staging / "model.onnx"
        start = time.perf_counter()
        export_onnx(model, ctx.example, fp32, self.cfg.exporter, self.cfg.opset)
        meta: dict[str, Any] = {
            "exporter": self.cfg.exporter,
            "opset": self.cfg.opset,
            "onnx_export_s": time.perf_counter() - start,
            # the FP32 file(s) a lowering starts from, to check that it really shrank the artifact
            "fp32_size_bytes": sum(f.stat().st_size for f in staging.iterdir()),
        }
        if lowering is None:
            files = []
            for f in staging.iterdir():  # the dynamo exporter may write weights to model.onnx.data beside it
                f.rename(workdir / f.name)
                files.append(f.name)
            staging.rmdir()
            meta.update(check_onnx(workdir / "model.onnx"))
            return Exported(self.format, "model.onnx", sorted(files), OPENER, meta)
        if isinstance(lowering, HalfSpec):
            main = "model.fp16.onnx"
            meta.update(convert_fp16(fp32, workdir / main))
        else:
            main = "model.int8.onnx"
            calib = ctx.data.x_calib[: lowering.calibration_size].numpy().astype(np.float32)
            meta.update(quantize_onnx(fp32, workdir / main, lowering, calib))
        meta["size_ratio_to_fp32"] = (workdir / main).stat().st_size / meta["fp32_size_bytes"]
        meta.update(check_onnx(workdir / main))
        shutil.rmtree(staging)
        return Exported(self.format, main, [main], OPENER, meta)
