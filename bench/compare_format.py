"""How a `bench.compare.Comparison` is shown: a terminal table, a JSON document, a Markdown pull-request comment,
and the cells of the HTML report's comparison table. Every view takes its words from `cells()`, so they agree."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from bench.compare import (
    BETTER,
    FASTER,
    NEW,
    OK,
    REGRESSION,
    SEVERITY,
    SMALLER,
    TOO_FEW,
    AccuracyChange,
    CellComparison,
    Comparison,
    LatencyChange,
    ResourceChange,
    format_p,
    settings_text,
)

COLUMNS = ("status", "cell", "clean acc", "robust acc", "latency", "size", "memory", "timed", "settings")
EMPTY = "-"


def accuracy_text(change: AccuracyChange | None) -> str:
    """The change in absolute points, the McNemar p-value, the verdict: "-20.0 pts p<0.001 regression"."""
    if change is None:
        return EMPTY
    if change.diff_points is None:
        return f"{EMPTY} ({'missing in the candidate' if change.candidate is None else 'new in the candidate'})"
    p = f" {format_p(change.p_value)}" if change.p_value is not None and change.diff_points else ""
    return f"{change.diff_points:+.1f} pts{p} {change.verdict}"


def _ratio(change: LatencyChange) -> str:
    text = f"b{change.batch} " + (EMPTY if change.raw_ratio is None else f"x{change.raw_ratio:.2f}")
    if change.normalised_ratio is not None:
        text += f" (norm x{change.normalised_ratio:.2f})"
    if change.p_value is not None:
        text += f" {format_p(change.p_value)}"
    return text


def latency_text(changes: list[LatencyChange]) -> str:
    """Per batch size the raw ratio, the normalised one, the Mann-Whitney p-value; batches that share a verdict
    share its words: "b1 x2.00 p=0.004, b8 x1.98 p=0.004 regression"."""
    groups: list[tuple[str, list[str]]] = []
    for change in changes:
        verdict = change.verdict
        if verdict == TOO_FEW:
            verdict = f"{TOO_FEW} ({change.processes[0] or '?'} vs {change.processes[1] or '?'})"
        if groups and groups[-1][0] == verdict:
            groups[-1][1].append(_ratio(change))
        else:
            groups.append((verdict, [_ratio(change)]))
    return "; ".join(f"{', '.join(items)} {verdict}" for verdict, items in groups) or EMPTY


def resource_text(change: ResourceChange | None) -> str:
    if change is None:
        return EMPTY
    if change.change is None:
        return f"{EMPTY} {change.verdict}"
    return f"{change.change * 100:+.1f}% {change.verdict}"


def timed_text(row: CellComparison) -> str:
    """Where each run's latency came from: measured in that run ("run") or reused from the stage cache."""
    if not row.latency or row.timings_fresh == (None, None):
        return EMPTY
    words = {True: "run", False: "cache", None: "?"}
    return f"{words[row.timings_fresh[0]]}/{words[row.timings_fresh[1]]}"


def details(row: CellComparison) -> list[str]:
    """The row's regressions, reasons and notes in words (settings are in their own column)."""
    out = [f"regression: {p}" for p in row.problems]
    out += [f"not comparable: {r}" for r in row.reasons]
    out += [n for n in row.notes if not n.startswith("settings differ")]
    return out + row.info


def cells(row: CellComparison) -> dict[str, str]:
    """The row as text, one entry per column of COLUMNS, plus "details"."""
    accuracy = {a.metric: a for a in row.accuracy}
    resources = {r.metric: r for r in row.resources}
    compared = row.status != NEW and row.baseline_status == row.candidate_status == "ok"
    return {
        "status": row.status if row.status != NEW else f"new ({row.candidate_status})",
        "cell": row.cell_id,
        "clean acc": accuracy_text(accuracy.get("clean")) if compared else EMPTY,
        "robust acc": accuracy_text(accuracy.get("robust")) if compared else EMPTY,
        "latency": latency_text(row.latency) if compared else EMPTY,
        "size": resource_text(resources.get("size")) if compared else EMPTY,
        "memory": resource_text(resources.get("memory")) if compared else EMPTY,
        "timed": timed_text(row) if compared else EMPTY,
        "settings": "; ".join(settings_text(s) for s in row.settings) or "same",
        "details": "; ".join(details(row)),
    }


def _thresholds_text(comparison: Comparison) -> str:
    t = comparison.thresholds
    parts = [
        f"latency {t.latency:.0%}",
        f"accuracy {t.accuracy * 100:g} pts",
        f"size {t.size:.0%}",
        f"memory {t.memory:.0%}",
    ]
    sources = {t.source.get(k, "default") for k in ("latency", "accuracy", "size", "memory")}
    where = (
        ", ".join(f"{k} from {t.source[k]}" for k in ("latency", "accuracy", "size", "memory"))
        if len(sources) > 1
        else next(iter(sources))
    )
    return f"thresholds: {', '.join(parts)} ({where})"


def summary_line(comparison: Comparison) -> str:
    s = comparison.summary()
    return (
        f"{s['baseline_cells']} cells compared, {s['regressions']} regressed; {s['not_comparable']} not comparable, "
        f"{s['changed']} changed, {s['ok']} ok, {s['new']} new"
    )


def _environment_lines(comparison: Comparison) -> list[str]:
    if not comparison.environment:
        return []
    diffs = ", ".join(f"{d.label} {d.baseline} -> {d.candidate}" for d in comparison.environment)
    tail = (
        "compared anyway (--force)"
        if comparison.forced
        else "affected cells are not comparable; --force compares anyway"
    )
    return [f"environment differs: {diffs}: {tail}"]


def terminal(comparison: Comparison) -> str:
    """A table sorted by severity, each non-ok row followed by its details in words, then the summary."""
    rows = [cells(r) for r in comparison.rows]
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in COLUMNS}
    lines = [
        f"baseline:  {comparison.baseline}",
        f"candidate: {comparison.candidate}",
        _thresholds_text(comparison),
        *_environment_lines(comparison),
        "",
        "  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip(),
    ]
    for row, text in zip(comparison.rows, rows, strict=True):
        status = text["status"].upper() if row.status == REGRESSION else text["status"]
        lines.append("  ".join((status if c == "status" else text[c]).ljust(widths[c]) for c in COLUMNS).rstrip())
        lines += [f"    - {d}" for d in details(row)]
    if not comparison.rows:
        lines.append("(the baseline has no cell)")
    lines.append("")
    untested = comparison.summary()["latency_not_judged"]
    if untested:
        lines.append(
            f"latency of {untested} cell(s): {TOO_FEW} (the Mann-Whitney test at p <= 0.01 needs 4 or more "
            "measurement processes per run: the nightly profile measures in 5, or set measurement.processes)"
        )
    lines.append(summary_line(comparison))
    return "\n".join(lines)


def to_json(comparison: Comparison) -> dict[str, Any]:
    return {
        "baseline": comparison.baseline,
        "candidate": comparison.candidate,
        "thresholds": dataclasses.asdict(comparison.thresholds),
        "forced": comparison.forced,
        "environment": [dataclasses.asdict(d) for d in comparison.environment],
        "summary": comparison.summary(),
        "rows": [dataclasses.asdict(r) | {"text": cells(r)} for r in comparison.rows],
    }


def write_json(comparison: Comparison, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(to_json(comparison), indent=2, default=str) + "\n", encoding="utf-8")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def markdown(comparison: Comparison) -> str:
    """A pull-request comment: the verdict and counts, then a table of the regressions and notable changes."""
    s = comparison.summary()
    icon = "❌" if s["regressions"] else "✅"
    verdict = f"{s['regressions']} regression{'s' * (s['regressions'] != 1)}" if s["regressions"] else "no regression"
    lines = [
        f"### {icon} bench compare: {verdict}",
        "",
        f"**{summary_line(comparison)}** — baseline `{comparison.baseline}`, candidate `{comparison.candidate}`.",
        "",
        _capital(_thresholds_text(comparison))
        + "; accuracy drops are judged by the exact McNemar test, slowdowns by a one-sided Mann-Whitney U test on "
        "per-process medians (p <= 0.05).",
    ]
    lines += [f"\n⚠️ {line}" for line in _environment_lines(comparison)]
    notable = [r for r in comparison.rows if r.status != OK]
    if notable:
        header = [c for c in COLUMNS if c != "timed"] + ["details"]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in notable:
            text = cells(row)
            text["cell"] = f"`{text['cell']}`"
            if row.status == REGRESSION:
                text["status"] = f"**{text['status']}**"
            lines.append("| " + " | ".join(_md(text[c]) for c in header) + " |")
    else:
        lines += ["", "No regression and no notable change."]
    if s["latency_not_judged"]:
        lines += [
            "",
            f"Latency of {s['latency_not_judged']} cell(s): {TOO_FEW} (fewer than 4 measurement processes per run).",
        ]
    return "\n".join(lines) + "\n"


def write_markdown(comparison: Comparison, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(markdown(comparison), encoding="utf-8")


# -- the HTML report ----------------------------------------------------------------------------------------------

STATUS_CLASS = {REGRESSION: "status failed", OK: "status ok", NEW: "status"}


def _metric_class(verdicts: list[str]) -> str:
    if REGRESSION in verdicts:
        return "num worse"
    return "num better" if any(v in (BETTER, FASTER, SMALLER) for v in verdicts) else "num"


def report_cells(row: CellComparison) -> list[tuple[str, str, Any, str]]:
    """(column, text, sort value, CSS class) for each of COLUMNS and "details": the report's comparison row."""
    text = cells(row)
    accuracy = {a.metric: a for a in row.accuracy}
    resources = {r.metric: r for r in row.resources}
    ratios = [lat.ratio for lat in row.latency if lat.ratio is not None]
    out = []
    for column in (*COLUMNS, "details"):
        sort: Any = text[column]
        cls = ""
        if column == "status":
            sort, cls = SEVERITY.index(row.status), STATUS_CLASS.get(row.status, "status skipped")
        elif column == "cell":
            cls = "id"
        elif column in ("clean acc", "robust acc"):
            change = accuracy.get(column.split()[0])
            sort = "" if change is None or change.diff_points is None else change.diff_points
            cls = _metric_class([change.verdict] if change else [])
        elif column == "latency":
            sort = max(ratios) if ratios else ""
            cls = _metric_class([lat.verdict for lat in row.latency])
        elif column in ("size", "memory"):
            resource = resources.get(column)
            sort = "" if resource is None or resource.change is None else resource.change
            cls = _metric_class([resource.verdict] if resource else [])
        out.append((column, text[column], sort, cls))
    return out
