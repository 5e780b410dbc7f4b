"""Compare a candidate run with a baseline, cell by cell (matched by cell_id).

A latency regression is a p50 slowdown beyond `latency_threshold` (relative); an accuracy regression is a drop
of clean or robust accuracy beyond `accuracy_threshold` (absolute). Sizes are reported, not gated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.record import CellRecord
    from bench.results import Run


def _p50(record: CellRecord, batch: str) -> float | None:
    stats = (record.latency_ms or {}).get(batch)
    return stats.p50 if stats else None


def compare_runs(
    baseline: Run, candidate: Run, latency_threshold: float, accuracy_threshold: float
) -> list[dict[str, Any]]:
    base = {r.cell_id: r for r in baseline.records if r.status == "ok"}
    rows = []
    for cand in candidate.records:
        old = base.get(cand.cell_id)
        if old is None or cand.status != "ok":
            continue
        problems = []
        for metric in ("clean_accuracy", "robust_accuracy"):
            before, after = getattr(old, metric), getattr(cand, metric)
            if before is not None and after is not None and before - after > accuracy_threshold:
                problems.append(f"{metric} {before:.3f} -> {after:.3f}")
        latency = {}
        for batch in sorted(set(old.latency_ms or {}) & set(cand.latency_ms or {}), key=int):
            before, after = _p50(old, batch), _p50(cand, batch)
            ratio = after / before if before and after is not None else None
            latency[batch] = ratio
            if ratio is not None and ratio > 1 + latency_threshold:
                problems.append(f"p50 latency at batch {batch} x{ratio:.2f}")
        rows.append(
            {
                "cell_id": cand.cell_id,
                "clean_accuracy": (old.clean_accuracy, cand.clean_accuracy),
                "robust_accuracy": (old.robust_accuracy, cand.robust_accuracy),
                "latency_ratio": latency,
                "size": (old.model_size_bytes, cand.model_size_bytes),
                "regression": bool(problems),
                "problems": problems,
            }
        )
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no cell is ok in both runs"
    lines = []
    for row in rows:
        ratios = ", ".join(f"b{b} x{r:.2f}" for b, r in row["latency_ratio"].items() if r is not None)
        verdict = "REGRESSION: " + "; ".join(row["problems"]) if row["regression"] else "ok"
        lines.append(f"{row['cell_id']}: latency {ratios or '-'}; {verdict}")
    n = sum(r["regression"] for r in rows)
    lines.append(f"{len(rows)} cells compared, {n} regressed")
    return "\n".join(lines)
