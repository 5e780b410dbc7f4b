"""`fp16`: half-precision weights and activations, lowered by the runtime (inputs and outputs stay FP32).

Eager and TorchScript run it on CUDA (CPU half kernels are slow or missing, so CPU cells are skipped with the
reason); ONNX Runtime gets `convert_float_to_float16(keep_io_types=True)`.
"""

from __future__ import annotations

from torch import nn

from bench.compressions import COMPRESSIONS, CompressContext, Compressed, HalfSpec
from bench.registry import NoConfig


@COMPRESSIONS.register("fp16", config=NoConfig, dtype="fp16", must_be_last=True)
def fp16(model: nn.Module, cfg: NoConfig, ctx: CompressContext) -> Compressed:
    """Half precision (FP16) at export."""
    return Compressed(model, lowering=HalfSpec())
