"""Sessions over ONNX artifacts with ONNX Runtime: the opener the `onnxruntime` runtime names at export.

No torch here (see bench.measure.sessions): importing this module pulls in ONNX Runtime and numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.measure.sessions import Session

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


class OnnxSession(Session):
    format = "onnx"

    def __init__(self, path: Path, device: str, threads: int | None, options: dict[str, Any] | None = None) -> None:
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
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
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


def open_onnx(path: Path, device: str, threads: int | None, options: dict[str, Any]) -> OnnxSession:
    return OnnxSession(path, device, threads, options)
