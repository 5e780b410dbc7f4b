"""`torchscript`: the model traced with torch.jit.trace and saved as a TorchScript file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from bench.registry import NoConfig
from bench.runtimes import RUNTIMES, Exported, Runtime
from bench.runtimes.eager import lower_torch, save_torchscript
from bench.runtimes.torch_session import OPEN_TORCHSCRIPT
from bench.types import CompressContext, Lowering


@RUNTIMES.register("torchscript", config=NoConfig)
class TorchScript(Runtime):
    """TorchScript (trace); deprecated upstream since PyTorch 2.5 but still a common deployment format."""

    name = "torchscript"
    format = "torchscript"
    dtypes = {"cpu": ("fp32", "int8"), "cuda": ("fp32", "fp16")}
    differentiable = True

    def export(self, model: nn.Module, lowering: Lowering | None, ctx: CompressContext, workdir: Path) -> Exported:
        meta: dict[str, Any] = {}
        example = ctx.example
        if lowering is not None:
            model, meta = lower_torch(model, lowering, ctx)
            if meta.get("precision") == "fp16":  # half kernels are traced where they run
                example = example.to(ctx.device)
        meta["torchscript"] = save_torchscript(model, example, workdir / "model.ts")
        return Exported(self.format, "model.ts", ["model.ts"], OPEN_TORCHSCRIPT, meta)
