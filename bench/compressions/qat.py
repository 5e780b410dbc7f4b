"""`qat`: quantization-aware training (Jacob et al. CVPR 2018, arXiv:1712.05877), then a real INT8 artifact.

From the trained float model: every Conv2d / Linear gets fake-quantized weights (int8, symmetric per output
channel) and fake-quantized inputs (uint8, per-tensor, ranges tracked by an exponential moving average), with
straight-through gradients, and the model is fine-tuned for `epochs`. The fake quantizers are then removed with
the weights left on the int8 grid, and the model is lowered like `int8` static with per-channel weights (ONNX
Runtime QDQ, or FX quantization for PyTorch runtimes), calibrated on the calibration split. BatchNorm is folded
into the preceding convolution first, so the fine-tuned weights are the deployed ones.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from bench.compressions import COMPRESSIONS, CompressContext, Compressed, QuantSpec, finetune
from bench.config import check_range
from bench.fake_quant import add_fake_quant, fold_batchnorm, remove_fake_quant


@dataclasses.dataclass
class QATConfig:
    epochs: int = 2
    lr: float = 0.005
    calibration_size: int | None = None

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, lo=1)
        check_range("lr", self.lr, lo=0, lo_open=True)
        check_range("calibration_size", self.calibration_size, lo=1)


@COMPRESSIONS.register("qat", config=QATConfig, dtype="int8", must_be_last=True)
def qat(model: nn.Module, cfg: QATConfig, ctx: CompressContext) -> Compressed:
    """Fine-tune with fake-quantized weights and activations, then lower to INT8 (per-channel weights)."""
    model = fold_batchnorm(model.cpu())
    added = add_fake_quant(model)
    cost = finetune(model, ctx, cfg.epochs, cfg.lr)
    remove_fake_quant(added)  # the weights stay on the int8 grid
    available = len(ctx.data.x_calib)
    spec = QuantSpec("static", True, "uint8", min(cfg.calibration_size or available, available))
    meta = {"fake_quantized_layers": len(added), "calibration_samples": spec.calibration_size, **cost}
    return Compressed(model.eval(), lowering=spec, meta=meta)
