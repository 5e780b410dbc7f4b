"""Open a deployed artifact as a session: `prepare(numpy batch) -> native input`, `run(native) -> output`.

This module imports no torch at the top: the measurement worker opens ONNX artifacts with ONNX Runtime alone,
so their memory figure is that of an ONNX Runtime deployment, not of a process that also holds PyTorch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("torch", "torchscript", "onnx")


class Session:
    """A loaded artifact. `sync` waits for queued device work (CUDA) so a timer can stop."""

    format: str
    device: str

    def prepare(self, batch: np.ndarray) -> Any:
        raise NotImplementedError

    def run(self, native_input: Any) -> Any:
        raise NotImplementedError

    def to_numpy(self, output: Any) -> np.ndarray:
        raise NotImplementedError

    def sync(self) -> None:
        """Nothing queued on the CPU; torch sessions on CUDA override it."""


class TorchSession(Session):
    def __init__(self, module: Any, fmt: str, device: str) -> None:
        import torch

        self._torch = torch
        self.module = module
        self.format = fmt
        self.device = device

    def prepare(self, batch: np.ndarray) -> Any:
        return self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    def run(self, native_input: Any) -> Any:
        with self._torch.inference_mode():
            return self.module(native_input)

    def to_numpy(self, output: Any) -> np.ndarray:
        return output.detach().float().cpu().numpy()

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()


class OnnxSession(Session):
    format = "onnx"

    def __init__(self, path: Path, device: str, threads: int | None, options: dict[str, Any] | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # keep ORT's warnings about unused initialisers out of the user's way
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
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


def open_session(fmt: str, path: Path, device: str = "cpu", threads: int | None = None) -> Session:
    """Load the artifact at `path` (format torch / torchscript / onnx) ready to run on `device`."""
    if fmt == "onnx":
        return OnnxSession(path, device, threads)
    import torch

    if threads:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.load's TypedStorage notice on pickled modules
        if fmt == "torch":
            # a whole pickled module: pruned models change shape, so a state dict alone could not rebuild them
            module = torch.load(path, map_location=device, weights_only=False)
        elif fmt == "torchscript":
            module = torch.jit.load(str(path), map_location=device)
        else:
            raise ValueError(f"unknown artifact format '{fmt}'; known: {', '.join(FORMATS)}")
    module.eval()
    return TorchSession(module, fmt, device)


def pin_threads_env(threads: int | None) -> dict[str, str]:
    """Environment for a worker process with OpenMP / MKL thread pools pinned like torch and ORT."""
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


Predict = Callable[[np.ndarray], np.ndarray]
