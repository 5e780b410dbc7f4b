"""Does a compression pay off where it runs? A compressed cell's latency against the uncompressed model exported
to the same runtime, measured in the same run (interleaved in the same processes when both are fresh).

A pruned network whose channel counts miss the SIMD width can run slower than the network it came from (on
ONNX Runtime, 11 or 61 channels leave the vectorised kernels idle); a user weighing a compression must see that in
the record, the summary and the report, not find it in a profiler. The verdict per batch size takes the median of
all timed calls and a one-sided Mann-Whitney test on them: "does not pay off" when the cell is slower by more than
the threshold at some batch size and the test supports it at the latency level (p <= 0.01); "faster" when it is
faster by more than the threshold at every batch size, with the same support; otherwise "no clear change".
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.record import Payoff
from bench.stats import LATENCY_ALPHA, slower_p

THRESHOLD = 0.05  # a 5% change of the median: below the drift of one machine between processes
SLOWER, FASTER, UNCLEAR = "does not pay off", "faster", "no clear change"


def read_samples(measure_dir: Path) -> dict[str, list[float]]:
    """A measure stage's raw call times per batch size, every process's pooled."""
    raw = json.loads((measure_dir / "samples.json").read_text())
    # one list per process (processes may time different numbers of calls), or one flat list in older entries
    return {b: [float(t) for t in _flat(v) if t is not None] for b, v in raw.items()}


def _flat(values: list) -> list:
    return [t for item in values for t in (item if isinstance(item, list) else [item])]


def latency_payoff(
    samples: dict[str, list[float]], baseline_samples: dict[str, list[float]], baseline_cell: str
) -> Payoff:
    """The verdict of a compressed artifact's call times against its uncompressed twin's, per batch size."""
    ratios, p_slower, p_faster = {}, {}, {}
    for batch in sorted(set(samples) & set(baseline_samples), key=int):
        cell, base = samples[batch], baseline_samples[batch]
        if not cell or not base:
            continue
        ratios[batch] = float(np.median(cell) / np.median(base))
        p_slower[batch] = slower_p(base, cell)
        p_faster[batch] = slower_p(cell, base)
    if not ratios:
        return Payoff(verdict=None, baseline_cell=baseline_cell)
    slower = [b for b in ratios if ratios[b] > 1 + THRESHOLD and p_slower[b] <= LATENCY_ALPHA]
    faster = all(ratios[b] < 1 / (1 + THRESHOLD) and p_faster[b] <= LATENCY_ALPHA for b in ratios)
    verdict = SLOWER if slower else FASTER if faster else UNCLEAR
    reported = p_faster if verdict == FASTER else p_slower  # the p-value of the direction the verdict is about
    return Payoff(
        verdict=verdict,
        baseline_cell=baseline_cell,
        ratio={b: round(r, 4) for b, r in ratios.items()},
        p_value={b: float(f"{reported[b]:.3g}") for b in ratios},
        slower_batches=[int(b) for b in slower] or None,
    )


def artifact_payoff(measure_dir: Path, baseline_dir: Path, baseline_cell: str) -> Payoff:
    """The verdict of one measured artifact against its uncompressed twin's measurement (two measure stage
    folders); computed once per pair, since every attack's cell of an artifact shares it."""
    return dataclasses.replace(_artifact_payoff(measure_dir, baseline_dir, baseline_cell))


@functools.lru_cache(maxsize=256)
def _artifact_payoff(measure_dir: Path, baseline_dir: Path, baseline_cell: str) -> Payoff:
    return latency_payoff(read_samples(measure_dir), read_samples(baseline_dir), baseline_cell)


def payoff_line(cell_id: Any, payoff: Payoff) -> str:
    """One console line for a cell that does not pay off: how much slower, at which batch sizes."""
    batches = payoff.slower_batches or []
    ratios = ", ".join(f"batch {b}: {payoff.ratio[str(b)]:.2f}x" for b in batches if payoff.ratio)
    return f"does not pay off: {cell_id} is slower than {payoff.baseline_cell} ({ratios})"
