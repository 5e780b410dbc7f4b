"""The report's HTML tables as plain rows of {text, sort, cls} dicts, so the template stays free of logic.

`sort` is the raw value the inline JS sorts by (a number where there is one), `text` what is shown.
"""

from __future__ import annotations

import json
from typing import Any

from bench.record import MetricVerdict
from bench.report.data import Run, cell_id, num

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
        return f"{value / 1e3:.3g} kB"  # SI: 1 kB = 1000 bytes, as everywhere in the harness
    return f"{value / 1e6:.2f} MB"


def compact(value: float | None) -> str | None:
    """30000 -> 30.0k, 1234567 -> 1.23M: parameter and MAC counts span many orders of magnitude."""
    if value is None:
        return None
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def metric_outcome(verdict: MetricVerdict) -> str:
    """kept / lost / inconclusive of one metric (a record from before the paired test has only `kept`)."""
    if verdict.verdict in ("kept", "lost", "inconclusive"):
        return str(verdict.verdict)
    return {True: "kept", False: "lost"}.get(verdict.kept, "inconclusive")  # type: ignore[arg-type]


def budget_detail(verdict: MetricVerdict) -> str:
    """One metric of the budget in words: value against its limit, n, discordant samples, p and the interval."""
    value, base, limit = num(verdict.value), num(verdict.baseline), num(verdict.limit)
    text = f"{pct(value) or MISSING} vs baseline {pct(base) or MISSING}"
    if limit is not None:
        text += f" (limit {pct(limit)})"
    text += f": {metric_outcome(verdict)}"
    if verdict.n is not None:
        text += f"; n={verdict.n}, {verdict.b} lost / {verdict.c} gained samples"
        p = num(verdict.p_value)
        text += f", p={p:.3g}" if p is not None else ""
        ci = verdict.ci if isinstance(verdict.ci, list) and len(verdict.ci) == 2 else None
        if ci is not None and all(num(x) is not None for x in ci):
            text += f", 95% CI of the difference [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}] points"
    return text


def failed_gates(run: Run) -> dict[str, list[dict[str, str]]]:
    """The run's gates that failed and those that were inconclusive: {"failed": [...], "inconclusive": [...]}."""
    out: dict[str, list[dict[str, str]]] = {"failed": [], "inconclusive": []}
    for cell in run.cells:
        for name, gate in (cell.gates or {}).items():
            key = {"fail": "failed", "inconclusive": "inconclusive"}.get(str(gate.verdict))
            if key:
                out[key].append({"cell": cell_id(cell), "gate": str(name), "detail": str(gate.detail or "")})
    return out


def environment(runs: list[Run]) -> list[tuple[str, list[str]]]:
    """(key, one value per run) for the union of the runs' environment keys, in first-seen order."""
    envs = [run.meta.get("environment") if isinstance(run.meta.get("environment"), dict) else {} for run in runs]
    keys = list(dict.fromkeys(key for env in envs for key in env))
    return [(key, [MISSING if env.get(key) is None else str(env.get(key)) for env in envs]) for key in keys]


def failed_checks(runs: list[Run], tags: list[str]) -> list[dict[str, str]]:
    """Every check whose ok is false (a missing ok is not a failure: the check may not have run), and every metric
    whose accuracy budget was lost."""
    failures = []
    for run, tag in zip(runs, tags, strict=True):
        for cell in run.cells:
            for name, check in (cell.checks or {}).items():
                if isinstance(check, dict) and check.get("ok") is False:
                    detail = str(check.get("detail") or "")
                    failures.append({"run": tag, "cell": cell_id(cell), "name": str(name), "detail": detail})
            budget = cell.budget
            verdicts = {} if budget is None else {"clean": budget.clean_accuracy, "robust": budget.robust_accuracy}
            for metric, verdict in verdicts.items():
                if verdict is not None and metric_outcome(verdict) == "lost":
                    name = f"accuracy budget lost: {metric}"
                    failures.append({"run": tag, "cell": cell_id(cell), "name": name, "detail": budget_detail(verdict)})
    return failures


def comparison(baseline: Run, runs: list[Run], tags: list[str]) -> tuple[list[str], list[Row]]:
    """`bench compare`'s rows of each run against the baseline (bench/compare.py): every baseline cell, severity
    first, with the same verdicts, units (accuracy in absolute points) and noise rules (exact McNemar, Mann-Whitney
    on per-process medians) and the candidate suite's thresholds."""
    from bench.compare import RunEvidence, compare_runs, resolve_thresholds
    from bench.compare_format import COLUMNS, report_cells

    base = RunEvidence.from_parts(baseline.path, baseline.meta, baseline.cells)
    headers = (["run"] if len(runs) > 1 else []) + [*COLUMNS, "details"]
    rows = []
    for run, tag in zip(runs, tags, strict=True):
        candidate = RunEvidence.from_parts(run.path, run.meta, run.cells)
        for row in compare_runs(base, candidate, resolve_thresholds(run.meta)).rows:
            tds = [td(tag, tag)] if len(runs) > 1 else []
            tds += [td(text, sort, cls) for _, text, sort, cls in report_cells(row)]
            rows.append({"status": row.status, "tds": tds})
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
        "gates": failed_gates(run),
        "path": str(run.path),
        # The resolved suite, pretty-printed for a collapsed <details>: what exactly was run.
        "suite_json": json.dumps(suite, indent=2, default=str) if suite else "",
    }
