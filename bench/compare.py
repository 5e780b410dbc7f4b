"""Compare a candidate run with a baseline, cell by cell (matched by cell_id).

A latency regression is a p50 slowdown beyond `latency_threshold` (relative); an accuracy regression is a drop
of clean or robust accuracy beyond `accuracy_threshold` (absolute). Sizes are reported, not gated.
"""

from __future__ import annotations

from typing import Any


def _p50(record: dict[str, Any], batch: str) -> float | None:
    return ((record.get("latency_ms") or {}).get(batch) or {}).get("p50")


def compare_runs(
    baseline: Any, candidate: Any, latency_threshold: float, accuracy_threshold: float
) -> list[dict[str, Any]]:
    base = {r["cell_id"]: r for r in baseline.records if r.get("status") == "ok"}
    rows = []
    for cand in candidate.records:
        old = base.get(cand["cell_id"])
        if old is None or cand.get("status") != "ok":
            continue
        problems = []
        for metric in ("clean_accuracy", "robust_accuracy"):
            before, after = old.get(metric), cand.get(metric)
            if before is not None and after is not None and before - after > accuracy_threshold:
                problems.append(f"{metric} {before:.3f} -> {after:.3f}")
        latency = {}
        for batch in sorted(set(old.get("latency_ms") or {}) & set(cand.get("latency_ms") or {}), key=int):
            before, after = _p50(old, batch), _p50(cand, batch)
            ratio = after / before if before else None
            latency[batch] = ratio
            if ratio is not None and ratio > 1 + latency_threshold:
                problems.append(f"p50 latency at batch {batch} x{ratio:.2f}")
        rows.append(
            {
                "cell_id": cand["cell_id"],
                "clean_accuracy": (old.get("clean_accuracy"), cand.get("clean_accuracy")),
                "robust_accuracy": (old.get("robust_accuracy"), cand.get("robust_accuracy")),
                "latency_ratio": latency,
                "size": (old.get("model_size_bytes"), cand.get("model_size_bytes")),
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
