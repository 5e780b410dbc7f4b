"""Sessions over ONNX artifacts with ONNX Runtime: the opener the `onnxruntime` runtime names at export.

No torch here (see bench.measure.sessions): importing this module pulls in ONNX Runtime and numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.measure.sessions import Session, warms_up

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def ort_providers(requested: list[str] | None, device: str) -> list[str]:
    """Provider names in priority order; CPU always last as the fallback ONNX Runtime itself uses."""
    names = requested or (["cuda"] if device.startswith("cuda") else ["cpu"])
    providers = [ORT_PROVIDERS[n] for n in names]
    return providers if "CPUExecutionProvider" in providers else [*providers, "CPUExecutionProvider"]


# A serialized ONNX model with no weights: one Identity node, float[1] -> float[1] (IR 7, opset 13), as
# onnx.helper.make_model(make_graph([make_node("Identity", ["x"], ["y"])], "g", [x], [y]), ir_version=7,
# opset_imports=[make_opsetid("", 13)]).SerializeToString() writes it; kept as bytes so that the worker need not
# import the onnx package (its memory would count in the runtime's baseline but not in a deployment).
IDENTITY_MODEL = (
    b'\x08\x07\x12\x00:7\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x01gZ\x0f\n\x01x\x12\n\n\x08\x08'
    b"\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)


class OnnxSession(Session):
    format = "onnx"

    def __init__(
        self, path: Path | bytes, device: str, threads: int | None, options: dict[str, Any] | None = None
    ) -> None:
        """A session over the ONNX file at `path` (or a serialized model given as bytes)."""
        import onnxruntime as ort

        options = options or {}
        opts = ort.SessionOptions()
        intra = options.get("intra_op_threads") or threads
        if intra:
            opts.intra_op_num_threads = intra
        opts.inter_op_num_threads = options.get("inter_op_threads") or 1
        level = options.get("graph_optimization", "all")
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        opts.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL
            if options.get("execution_mode") == "parallel"
            else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        opts.log_severity_level = 3  # keep ORT's warnings about unused initialisers out of the user's way
        providers = ort_providers(options.get("providers"), device)
        model = path if isinstance(path, bytes) else str(path)
        self.session = ort.InferenceSession(model, sess_options=opts, providers=providers)
        self.settings = {
            "intra_op_threads": opts.intra_op_num_threads,
            "inter_op_threads": opts.inter_op_num_threads,
            "graph_optimization": level,
            "execution_mode": options.get("execution_mode", "sequential"),
        }
        self.input_name = self.session.get_inputs()[0].name
        self.device = device
        self.providers = self.session.get_providers()

    def prepare(self, batch: np.ndarray) -> Any:
        return np.ascontiguousarray(batch, dtype=np.float32)

    def run(self, native_input: Any) -> Any:
        # plain run() copies outputs to the host, so it is synchronous also with the CUDA provider
        return self.session.run(None, {self.input_name: native_input})[0]

    def to_numpy(self, output: Any) -> np.ndarray:
        return np.asarray(output)

    def details(self) -> dict[str, Any]:
        return {"providers": self.session.get_providers(), "session_options": self.settings}


def warm_onnx(device: str, threads: int | None, options: dict[str, Any]) -> OnnxSession:
    """ONNX Runtime up with no model: a session over a weightless Identity graph with the same providers and
    options, run once, so the ORT environment, the providers and the thread pools exist. It must stay alive while
    the artifact is measured (it is part of the baseline)."""
    session = OnnxSession(IDENTITY_MODEL, device, threads, options)
    session.run(np.ones(1, dtype=np.float32))
    return session


@warms_up(warm_onnx)
def open_onnx(path: Path, device: str, threads: int | None, options: dict[str, Any]) -> OnnxSession:
    return OnnxSession(path, device, threads, options)
