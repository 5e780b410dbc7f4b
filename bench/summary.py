"""The summary table `bench run` prints at the end: one line per cell, the figures a user looks at first."""

from __future__ import annotations

from bench.payoff import SLOWER, payoff_line
from bench.record import CellRecord


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _size(n: int | None) -> str:
    """Bytes in SI units (kB = 1000 bytes), as the report writes them."""
    if n is None:
        return "-"
    if n < 1000:
        return f"{n} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if n < scale * 1000 or unit == "GB":
            return f"{n / scale:.1f} {unit}"
    return str(n)


def summary_table(records: list[CellRecord]) -> str:
    header = ("cell", "status", "clean", "robust", "threat", "p50 b1 ms", "size")
    rows = []
    for r in records:
        latency = (r.latency_ms or {}).get("1")
        rows.append(
            (
                r.cell_id,
                r.status,
                _pct(r.clean_accuracy),
                _pct(r.robust_accuracy),
                r.threat_model or "-",
                f"{latency.p50:.3f}" if latency and latency.p50 is not None else "-",
                _size(r.model_size_bytes),
            )
        )
    reasons = sorted({r.reason for r in records if r.status == "skipped" and r.reason})
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in (header, *rows)]
    lines += [f"skipped: {reason}" for reason in reasons]
    lines += [payoff_line(r.cell_id, r.payoff) for r in records if r.payoff and r.payoff.verdict == SLOWER]
    return "\n".join(lines)
