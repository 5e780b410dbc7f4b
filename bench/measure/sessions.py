"""Open a deployed artifact as a session: `prepare(numpy batch) -> native input`, `run(native) -> output`.

This module imports no torch at the top: the measurement worker opens ONNX artifacts with ONNX Runtime alone,
so their memory figure is that of an ONNX Runtime deployment, not of a process that also holds PyTorch.
"""

from __future__ import annotations

import hashlib
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
        self.eager_module = module  # the same weights without torch.compile, for input gradients
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


class ArtifactIntegrityError(RuntimeError):
    """The artifact on disk is not the one that was exported (altered or truncated)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, sha256: str | None) -> None:
    """Refuse an artifact whose bytes changed since export: it must never be measured or scored silently."""
    if sha256 is None:
        return
    if not path.is_file():
        raise ArtifactIntegrityError(f"artifact {path} is missing")
    actual = sha256_file(path)
    if actual != sha256:
        raise ArtifactIntegrityError(
            f"artifact {path} was altered or truncated since export: sha256 {actual[:16]}..., "
            f"recorded {sha256[:16]}... ({path.stat().st_size} bytes); delete its cache entry to re-export"
        )


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


def open_session(
    fmt: str,
    path: Path,
    device: str = "cpu",
    threads: int | None = None,
    options: dict[str, Any] | None = None,
    sha256: str | None = None,
) -> Session:
    """Load the artifact at `path` (format torch / torchscript / onnx) ready to run on `device`.

    With `sha256`, the file is verified first (ArtifactIntegrityError if it changed). `options` are the runtime's
    session settings (ONNX Runtime providers and session options; `compile` for torch.compile).
    """
    verify(path, sha256)
    if fmt == "onnx":
        return OnnxSession(path, device, threads, options)
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
    session = TorchSession(module, fmt, device)
    if (options or {}).get("compile"):
        # inductor compiles lazily at the first call, which the worker times apart from the steady state
        session.module = torch.compile(module, mode=options.get("compile_mode") or None)
        session.eager_module = module
    return session


def pin_threads_env(threads: int | None) -> dict[str, str]:
    """Environment for a worker process with OpenMP / MKL thread pools pinned like torch and ORT."""
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


Predict = Callable[[np.ndarray], np.ndarray]
