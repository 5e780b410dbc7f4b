"""`torch_compile`: the eager artifact run through torch.compile (TorchInductor) at load.

The artifact on disk is the pickled module (what a service ships); compilation happens in the process that
serves it, so its cost is the load/first-call time the measurement worker reports apart from steady state.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from bench.runtimes import RUNTIMES, Exported, Runtime
from bench.runtimes.torch_session import OPEN_PICKLED
from bench.types import CompressContext, Lowering


@dataclasses.dataclass
class CompileConfig:
    mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"


@RUNTIMES.register("torch_compile", config=CompileConfig)
class TorchCompile(Runtime):
    """torch.compile with the inductor backend (FP32; FP16 on CUDA)."""

    name = "torch_compile"
    format = "torch"
    dtypes = {"cpu": ("fp32",), "cuda": ("fp32", "fp16")}
    differentiable = True

    def session_options(self) -> dict[str, Any]:
        return {"compile": True, "compile_mode": None if self.cfg.mode == "default" else self.cfg.mode}

    def export(self, model: nn.Module, lowering: Lowering | None, ctx: CompressContext, workdir: Path) -> Exported:
        from bench.runtimes.eager import lower_torch

        meta: dict[str, Any] = {"compile_mode": self.cfg.mode}
        if lowering is not None:
            model, lowered = lower_torch(model, lowering, ctx)
            meta.update(lowered)
        torch.save(model, workdir / "model.pt")
        return Exported(self.format, "model.pt", ["model.pt"], OPEN_PICKLED, meta)
