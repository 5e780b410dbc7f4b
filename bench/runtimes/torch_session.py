"""Sessions over PyTorch artifacts: a pickled whole module (`torch.save`) or a TorchScript file.

Openers named by the eager, TorchScript and torch.compile runtimes at export (see bench.measure.sessions). torch is
imported when an artifact is opened, not when this module is.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure.sessions import Session, warms_up

# The openers' names, as runtimes put them into `Exported.session`.
OPEN_PICKLED = f"{__name__}:open_pickled_module"
OPEN_TORCHSCRIPT = f"{__name__}:open_torchscript"


class TorchSession(Session):
    def __init__(self, module: Any, fmt: str, device: str) -> None:
        import torch

        self._torch = torch
        self.module = module
        self.eager_module = module  # the same weights without torch.compile, for input gradients
        self.format = fmt
        self.device = device
        self.torch_cuda = device.startswith("cuda")
        # the profiling executor re-optimises a TorchScript graph over its first calls
        self.min_warmup_iterations = 5 if fmt == "torchscript" else 0

    def prepare(self, batch: np.ndarray) -> Any:
        return self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    def run(self, native_input: Any) -> Any:
        with self._torch.inference_mode():
            return self.module(native_input)

    def to_numpy(self, output: Any) -> np.ndarray:
        return output.detach().float().cpu().numpy()

    def sync(self) -> None:
        if self.torch_cuda:
            self._torch.cuda.synchronize()


def _session(module: Any, fmt: str, device: str, options: dict[str, Any]) -> TorchSession:
    import torch

    module.eval()
    session = TorchSession(module, fmt, device)
    if options.get("compile"):
        # inductor compiles lazily at the first call, which the worker times apart from the steady state
        session.module = torch.compile(module, mode=options.get("compile_mode") or None)
    return session


def warm_torch(device: str, threads: int | None, options: dict[str, Any]) -> None:
    """PyTorch up with no model, as the openers below would leave it: torch imported, its threads set, the intra-op
    thread pool, the allocator and common kernels (convolution, pooling, linear, matmul) run once on `device` (for
    CUDA the context and cuBLAS too); for torch.compile, its compiler's modules imported (about 200 MB, a cost of the
    runtime, not of the model; the compilation itself stays the model's, at the first call)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    with torch.inference_mode():
        x = torch.ones(2, 3, 8, 8, device=device)  # a batch of 2: a batch of 1 this small skips oneDNN's convolution
        y = torch.nn.functional.conv2d(x, torch.ones(4, 3, 3, 3, device=device)).relu()
        y = torch.nn.functional.max_pool2d(y, 2).flatten(1)
        y = torch.nn.functional.linear(y, torch.ones(5, y.shape[1], device=device), torch.ones(5, device=device))
        float((y @ y.T).sum())  # a host copy: waits for the device too
    if options.get("compile"):
        import torch._dynamo
        import torch._inductor.compile_fx


@warms_up(warm_torch)
def open_pickled_module(path: Path, device: str, threads: int | None, options: dict[str, Any]) -> TorchSession:
    """A whole pickled module: pruned models change shape, so a state dict alone could not rebuild them."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.load's TypedStorage notice on pickled modules
        module = torch.load(path, map_location=device, weights_only=False)
    return _session(module, "torch", device, options)


@warms_up(warm_torch)
def open_torchscript(path: Path, device: str, threads: int | None, options: dict[str, Any]) -> TorchSession:
    import torch

    if threads:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location=device)
    return _session(module, "torchscript", device, options)
