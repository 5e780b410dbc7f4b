"""`none`: the trained model as it is, the baseline every compression is compared with."""

from __future__ import annotations

from torch import nn

from bench.compressions import COMPRESSIONS, CompressContext, Compressed
from bench.registry import NoConfig


@COMPRESSIONS.register("none", config=NoConfig, dtype="fp32")
def none(model: nn.Module, cfg: NoConfig, ctx: CompressContext) -> Compressed:
    """No compression (the uncompressed baseline)."""
    return Compressed(model)
