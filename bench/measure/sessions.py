"""Open a deployed artifact as a session: `prepare(numpy batch) -> native input`, `run(native) -> output`.

Which code opens an artifact is the runtime's business: at export it names an opener, `module:function` with the
signature `(path, device, threads, options) -> Session` (e.g. `bench.runtimes.ort_session:open_onnx`), and
`open_session` imports that opener after verifying the file. An opener may also say how to bring its runtime up
with no model (`warms_up`, `warm_runtime`): the measurement worker does that first and takes the RSS then as the
baseline of the model's own share of the memory (`model_memory_mb`).

This module imports no torch: the measurement worker opens ONNX artifacts with ONNX Runtime alone, so their memory
figure is that of an ONNX Runtime deployment, not of a process that also holds PyTorch (the ONNX opener's module must
not import torch either).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bench.filehash import sha256_file


class Session:
    """A loaded artifact. Subclasses set what the worker needs to know about them:

    - `module`: the callable that runs (None outside PyTorch); `eager_module`: the same weights without compilation,
      for input gradients (None when the artifact has no differentiable module);
    - `min_warmup_iterations`: warm-up calls a format needs before its steady state (TorchScript re-optimises);
    - `torch_cuda`: True when the work runs through PyTorch on a CUDA device (GPU memory is then measured).
    """

    format: str
    device: str
    module: Any = None
    eager_module: Any = None
    min_warmup_iterations: int = 0
    torch_cuda: bool = False

    def prepare(self, batch: np.ndarray) -> Any:
        raise NotImplementedError

    def run(self, native_input: Any) -> Any:
        raise NotImplementedError

    def to_numpy(self, output: Any) -> np.ndarray:
        raise NotImplementedError

    def sync(self) -> None:
        """Wait for queued device work so a timer can stop (nothing to wait for on the CPU)."""

    def details(self) -> dict[str, Any]:
        """Settings the session actually runs with, recorded beside the measurement (e.g. ORT providers)."""
        return {}


class ArtifactIntegrityError(RuntimeError):
    """The artifact on disk is not the one that was exported (altered or truncated)."""


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


def open_session(
    opener: str,
    path: Path,
    device: str = "cpu",
    threads: int | None = None,
    options: dict[str, Any] | None = None,
    sha256: str | None = None,
) -> Session:
    """Load the artifact at `path` with the opener `module:function` its runtime named, ready to run on `device`.

    With `sha256`, the file is verified first (ArtifactIntegrityError if it changed). `options` are the runtime's
    session settings (ONNX Runtime providers and session options; `compile` for torch.compile).
    """
    verify(path, sha256)
    return _opener(opener)(path, device, threads, options or {})


def _opener(opener: str) -> Callable[..., Session]:
    module_name, _, function = opener.partition(":")
    return getattr(importlib.import_module(module_name), function)


# `warm(device, threads, options) -> anything`: brings a runtime up without a model (see `warms_up`)
Warmer = Callable[[str, int | None, dict[str, Any]], Any]
OpenerT = TypeVar("OpenerT", bound=Callable[..., Any])


def warms_up(warm: Warmer) -> Callable[[OpenerT], OpenerT]:
    """Decorator for an opener: `warm(device, threads, options)` brings the opener's runtime up in this process with
    no model, the way opening an artifact would (imports, thread pools, allocator, device context), so that what
    opening and running the artifact adds on top is the model's own share. It returns whatever must stay alive
    meanwhile (e.g. a session over a trivial model), or None.

        @warms_up(warm_torch)
        def open_pickled_module(path, device, threads, options): ...
    """

    def attach(opener: OpenerT) -> OpenerT:
        setattr(opener, "warm_up", warm)  # noqa: B010 (an attribute a plain function does not declare)
        return opener

    return attach


def warm_runtime(
    opener: str, device: str = "cpu", threads: int | None = None, options: dict[str, Any] | None = None
) -> Any:
    """Bring up the runtime that `opener` loads artifacts into, without loading one: the opener's `warms_up`
    function, or by default just the import of the opener's module. Keep the return value alive until the
    measurement is done (what it holds belongs to the runtime's baseline)."""
    warm = getattr(_opener(opener), "warm_up", None)
    return None if warm is None else warm(device, threads, options or {})


def pin_threads_env(threads: int | None) -> dict[str, str]:
    """Environment for a worker process with OpenMP / MKL thread pools pinned like torch and ORT."""
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env
