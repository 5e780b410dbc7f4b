"""The report's HTML tables as plain rows of {text, sort, cls} dicts, so the template stays free of logic.

`sort` is the raw value the inline JS sorts by (a number where there is one), `text` what is shown.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bench.record import CellRecord
from bench.report.data import Run, cell_id, cost, num, p50

Td = dict[str, Any]
Row = dict[str, Any]

MISSING = "—"


def td(text: Any, sort: Any = None, cls: str = "", title: str = "") -> Td:
    return {
        "text": MISSING if text is None else str(text),
        "sort": "" if sort is None else sort,
        "cls": cls,
        "title": title,
    }


def pct(value: float | None) -> str | None:
    return None if value is None else f"{value * 100:.1f}%"


def ms(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def human_bytes(value: float | None) -> str | None:
    if value is None:
        return None
    if value < 1e6:
        return f"{value / 1e3:.3g} KB"
    return f"{value / 1e6:.2f} MB"


def compact(value: float | None) -> str | None:
    """30000 -> 30.0k, 1234567 -> 1.23M: parameter and MAC counts span many orders of magnitude."""
    if value is None:
        return None
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def last_line(text: Any) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _latency_td(cell: CellRecord, batch: int | None) -> Td:
    value, used, insufficient = p50(cell, batch)
    text = ms(value)
    if text is not None and batch is None:
        text += f" (b{used})"
    # A percentile from too few samples is still shown, but flagged so nobody reads it as solid.
    flag = "too few samples for a reliable p50" if insufficient else ""
    return td(text + " *" if text and insufficient else text, value, "num insufficient" if flag else "num", flag)


def matrix(runs: list[Run], tags: list[str]) -> tuple[list[str], list[Row]]:
    """Header and rows of the results matrix; a "run" column is added when there are several runs."""
    headers = ["run"] if len(runs) > 1 else []
    headers += ["cell", "status", "clean acc", "robust acc", "threat model", "p50 b1 (ms)", "p50 max batch (ms)"]
    headers += ["throughput (/s)", "peak mem (MB)", "size", "params", "MACs", "cost (s)", "budget"]
    headers += ["reason / error"]
    rows = []
    for run, tag in zip(runs, tags, strict=True):
        for cell in run.cells:
            status = str(cell.status or "unknown")
            clean, robust = num(cell.clean_accuracy), num(cell.robust_accuracy)
            throughput, memory = num(cell.throughput_sps), num(cell.peak_memory_mb)
            size, params, macs = num(cell.model_size_bytes), num(cell.params), num(cell.macs)
            total = cost(cell)
            tds = [td(tag, tag)] if len(runs) > 1 else []
            tds += [
                td(cell_id(cell), cell_id(cell), "id"),
                td(status, status, f"status {status}"),
                td(pct(clean), clean, "num"),
                td(pct(robust), robust, "num"),
                td(cell.threat_model, cell.threat_model, title=str(cell.surrogate or "")),
                _latency_td(cell, 1),
                _latency_td(cell, None),
                td(None if throughput is None else f"{throughput:,.0f}", throughput, "num"),
                td(None if memory is None else f"{memory:.1f}", memory, "num"),
                td(human_bytes(size), size, "num"),
                td(compact(params), params, "num"),
                td(compact(macs), macs, "num"),
                td(None if total is None else f"{total:.1f}", total, "num"),
                _budget_td(cell),
            ]
            error = cell.error
            note = last_line(error) if error else str(cell.reason or "")
            rows.append({"status": status, "tds": tds, "note": note, "detail": str(error) if error else ""})
    return headers, rows


def _budget_td(cell: CellRecord) -> Td:
    """Within the accuracy budget of the uncompressed baseline (clean and robust), as MLPerf's 99% rule."""
    budget = cell.budget
    if budget is None or budget.within_budget is None:
        return td(None)
    ok = bool(budget.within_budget)
    verdicts = {"clean": budget.clean_accuracy, "robust": budget.robust_accuracy}
    lost = [metric for metric, verdict in verdicts.items() if verdict is not None and not verdict.kept]
    text = "kept" if ok else "lost: " + ", ".join(lost)
    return td(
        text,
        int(ok),
        "status ok" if ok else "status failed",
        title=f"at least {num(budget.ratio) or 0:.0%} of the uncompressed eager baseline",
    )


def run_invariants(runs: list[Run], tags: list[str]) -> list[dict[str, str]]:
    """Run-level robustness invariants that failed (eps monotonicity, PGD vs FGSM, gradient masking)."""
    out = []
    for run, tag in zip(runs, tags, strict=True):
        invariants = run.meta.get("invariants") if isinstance(run.meta.get("invariants"), dict) else {}
        for v in invariants.get("violations") or []:
            out.append(
                {
                    "run": tag,
                    "check": str(v.get("check")),
                    "artifact": str(v.get("artifact")),
                    "detail": str(v.get("detail")),
                }
            )
    return out


def environment(runs: list[Run]) -> list[tuple[str, list[str]]]:
    """(key, one value per run) for the union of the runs' environment keys, in first-seen order."""
    envs = [run.meta.get("environment") if isinstance(run.meta.get("environment"), dict) else {} for run in runs]
    keys = list(dict.fromkeys(key for env in envs for key in env))
    return [(key, [MISSING if env.get(key) is None else str(env.get(key)) for env in envs]) for key in keys]


def failed_checks(runs: list[Run], tags: list[str]) -> list[dict[str, str]]:
    """Every check whose ok is false (a missing ok is not a failure: the check may not have run)."""
    failures = []
    for run, tag in zip(runs, tags, strict=True):
        for cell in run.cells:
            for name, check in (cell.checks or {}).items():
                if isinstance(check, dict) and check.get("ok") is False:
                    detail = str(check.get("detail") or "")
                    failures.append({"run": tag, "cell": cell_id(cell), "name": str(name), "detail": detail})
    return failures


Getter = Callable[[CellRecord], float | None]
Formatter = Callable[[float | None], str | None]

# (header, value, format, higher is better, relative tolerance before a change counts as worse).
# Latency gets 5% because timings are noisy; accuracy and size are deterministic, so any loss counts.
METRICS: list[tuple[str, Getter, Formatter, bool, float]] = [
    ("clean acc", lambda c: num(c.clean_accuracy), pct, True, 0.0),
    ("robust acc", lambda c: num(c.robust_accuracy), pct, True, 0.0),
    ("p50 b1 (ms)", lambda c: p50(c, 1)[0], ms, False, 0.05),
    ("size", lambda c: num(c.model_size_bytes), human_bytes, False, 0.0),
]


def relative_change(base: float | None, new: float | None) -> float | None:
    if base is None or new is None or base == 0:
        return None
    return (new - base) / abs(base)


def _change_td(base: float | None, new: float | None, higher_is_better: bool, tolerance: float) -> Td:
    change = relative_change(base, new)
    if change is None:
        return td(None, cls="num")
    gain = change if higher_is_better else -change
    cls = "worse" if gain < -tolerance else "better" if gain > tolerance else ""
    return td(f"{change * 100:+.1f}%", change, f"num {cls}")


def comparison(baseline: Run, runs: list[Run], tags: list[str]) -> tuple[list[str], list[Row]]:
    """Cells present in both the baseline and a run, matched by cell id: baseline -> candidate and the change."""
    base_cells = {cell_id(c): c for c in baseline.cells if c.cell_id}
    headers = (["run"] if len(runs) > 1 else []) + ["cell"]
    for name, *_ in METRICS:
        headers += [f"{name}: baseline → candidate", "change"]
    rows = []
    for run, tag in zip(runs, tags, strict=True):
        for cell in run.cells:
            base = base_cells.get(cell_id(cell))
            if base is None:
                continue
            tds = [td(tag, tag)] if len(runs) > 1 else []
            tds.append(td(cell_id(cell), cell_id(cell), "id"))
            for _, value, fmt, higher_is_better, tolerance in METRICS:
                old, new = value(base), value(cell)
                tds.append(td(f"{fmt(old) or MISSING} → {fmt(new) or MISSING}", new, "num"))
                tds.append(_change_td(old, new, higher_is_better, tolerance))
            rows.append({"tds": tds})
    return headers, rows


def status_row(run: Run) -> dict[str, Any]:
    meta = run.meta
    suite = meta.get("suite")
    return {
        "name": run.name,
        "status": str(meta.get("status") or "unknown"),
        "suite_file": meta.get("suite_file"),
        "started_at": meta.get("started_at"),
        "finished_at": meta.get("finished_at"),
        "seed": meta.get("seed"),
        "counts": run.counts(),
        "path": str(run.path),
        # The resolved suite, pretty-printed for a collapsed <details>: what exactly was run.
        "suite_json": json.dumps(suite, indent=2, default=str) if suite else "",
    }
