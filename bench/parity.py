"""FP32 parity: an FP32 runtime must compute what the eager model it was exported from computes.

Otherwise its latency and accuracy describe another model. A cell whose lowering is INT8 or FP16 is exempt (its
outputs differ by design); for the others the runner raises, which records the cell as failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.matrix import Cell

PARITY_MAX_ABS_DIFF = 1e-3  # logits of an FP32 runtime against the eager model it was exported from
PARITY_MIN_AGREEMENT = 0.99


def check_parity(cell: Cell, agreement: dict[str, float]) -> None:
    """An FP32 runtime must compute what the eager model computes; otherwise its numbers describe another model."""
    diff, top1 = agreement["max_abs_logit_diff"], agreement["top1_agreement"]
    if diff > PARITY_MAX_ABS_DIFF or top1 < PARITY_MIN_AGREEMENT:
        raise RuntimeError(
            f"{cell.runtime.label} disagrees with the FP32 eager model: max |logit difference| {diff:.2e} "
            f"(tolerance {PARITY_MAX_ABS_DIFF:g}), top-1 agreement {top1:.2%} (at least {PARITY_MIN_AGREEMENT:.0%})"
        )
