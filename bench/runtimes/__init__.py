"""The runtime axis: how a (compressed) model is deployed and executed.

A runtime exports the model to its artifact (`export`), declares what it can run (`dtypes` per device) and
opens the artifact as a predictor for evaluation (`predictor`). Latency and memory are measured on the same
artifact file in a fresh process (bench.measure). `differentiable` says whether the deployed predictor gives
input gradients (white-box attacks); when it does not, attacks are crafted on the float eager twin (transfer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bench.registry import Registry

if TYPE_CHECKING:  # no torch at import: the measurement worker imports this package's ONNX session module alone
    import torch
    from torch import nn

    from bench.types import CompressContext, Lowering

RUNTIMES: Registry = Registry("runtime", package="bench.runtimes")


@dataclasses.dataclass
class Exported:
    """An artifact on disk: its files (relative to the export dir), the one to load, and what export did.

    `session` names the function that opens it, `module:function` with the signature
    `(path, device, threads, options) -> bench.measure.sessions.Session`: the measurement worker and evaluation
    open the artifact through it, so a new artifact format needs no edit outside its runtime's files.
    """

    format: str
    main_file: str
    files: list[str]
    session: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Predictor:
    """Batch of [0, 1] pixels in, logits out. `module` is set only when input gradients exist (white-box)."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    module: nn.Module | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Runtime:
    """Base of runtime plugins; a plugin sets the class attributes and writes `export`."""

    name: ClassVar[str]  # the registered name, for messages
    format: ClassVar[str]
    dtypes: ClassVar[dict[str, tuple[str, ...]]]  # device -> dtypes it executes
    differentiable: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @classmethod
    def unsupported(cls, dtype: str, device: str) -> str | None:
        """The skip reason for an artifact of `dtype` on `device`, or None when this runtime can run it."""
        supported = cls.dtypes.get(device.split(":")[0], ())
        if dtype not in supported:
            have = ", ".join(supported) or "nothing"
            return f"the {cls.name} runtime has no {dtype} kernels on {device} (it runs {have} there)"
        return None

    def unavailable(self, device: str) -> str | None:
        """The skip reason when something this configuration needs is missing here (e.g. a provider)."""
        return None

    def session_options(self) -> dict[str, Any]:
        """Settings the artifact is opened with, in the measurement worker and for evaluation alike."""
        return {}

    def export(self, model: nn.Module, lowering: Lowering | None, ctx: CompressContext, workdir: Path) -> Exported:
        raise NotImplementedError

    def predictor(
        self, workdir: Path, exported: Exported, device: str, threads: int | None, sha256: str | None = None
    ) -> Predictor:
        """Open the artifact (verified against its sha256) in this process, as the worker opens it."""
        import torch

        from bench.measure.sessions import open_session

        session = open_session(
            exported.session, workdir / exported.main_file, device, threads, self.session_options(), sha256
        )

        def run(x: torch.Tensor) -> torch.Tensor:
            out = session.run(session.prepare(x.detach().cpu().numpy()))
            return torch.as_tensor(session.to_numpy(out))

        # INT8 kernels and ONNX Runtime give no input gradients: no module is offered for white-box attacks
        gradients = self.differentiable and not exported.meta.get("quantized_layers")
        return Predictor(run, session.eager_module if gradients else None)
