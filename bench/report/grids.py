"""The report's large tables as compact JSON that the page's script pages, sorts and filters.

A grid is {"id", "columns": [{"label", "fmt", "title"}], "rows": [[value, ...]], and "classes" (one CSS class per row)
or "class_col" (the column whose value is the row's class)}. A value is
raw (a number, a string or null) and the column's `fmt` says how the script shows it (pct, ms, bytes, compact,
f1, f2, ratio, text, id, status, verdict; msb: [ms, batch, "*" when from too few samples]). {"v": raw, "t": text,
"h": tooltip, "d": detail, "c": class} overrides the text, adds a tooltip or a collapsible detail (a traceback),
or sets the cell's CSS class. Raw values
keep a 10,000-cell table to a few MB: the formatting that would repeat in every row lives once in the script.
"""

from __future__ import annotations

from typing import Any

from bench.record import CellRecord
from bench.report.data import Run, cell_id, cost, num, p50
from bench.report.tables import metric_outcome
from bench.report.views import EAGER, EVAL_COSTS, BreakEven, Variant, baseline_of, ratio

Grid = dict[str, Any]


def _r(value: float | None, digits: int = 4) -> float | None:
    """`value` rounded to `digits` significant digits: enough for every shown number, and fewer bytes."""
    if value is None:
        return None
    return float(f"{value:.{digits}g}")


def col(label: str, fmt: str = "text", title: str = "") -> dict[str, str]:
    out = {"label": label, "fmt": fmt}
    if title:
        out["title"] = title
    return out


def budget_text(cell: CellRecord) -> str | None:
    budget = cell.budget
    if budget is None or budget.within_budget is None:
        return None
    verdicts = {"clean": budget.clean_accuracy, "robust": budget.robust_accuracy}
    outcome = {metric: metric_outcome(v) for metric, v in verdicts.items() if v is not None}
    lost = [metric for metric, o in outcome.items() if o == "lost"]
    unsure = [metric for metric, o in outcome.items() if o == "inconclusive"]
    if lost or budget.within_budget is False:
        return "lost: " + ", ".join(lost or ["?"])
    if unsure:
        return "inconclusive: " + ", ".join(unsure)
    return "kept"


def payoff_text(cell: CellRecord) -> str | None:
    payoff = cell.payoff
    if payoff is None or payoff.verdict is None:
        return None
    ratios = list((payoff.ratio or {}).values())
    if not ratios:
        return str(payoff.verdict)
    shown = min(ratios) if payoff.verdict == "faster" else max(ratios)
    return f"{payoff.verdict} ({shown:.2f}x)"


def gates_text(cell: CellRecord) -> str | None:
    gates = cell.gates or {}
    if not gates:
        return None
    failed = sorted(name for name, g in gates.items() if g.verdict == "fail")
    unsure = sorted(name for name, g in gates.items() if g.verdict == "inconclusive")
    if failed:
        return "failed: " + ", ".join(failed)
    if unsure:
        return "inconclusive: " + ", ".join(unsure)
    return "passed"


def _int(value: float | None) -> int | float | None:
    """A count as an int (no ".0" in the JSON)."""
    return int(value) if value is not None and value.is_integer() else value


def _max_batch(cell: CellRecord) -> Any:
    value, batch, insufficient = p50(cell, None)
    if value is None:
        return None
    return [_r(value), batch] + (["*"] if insufficient else [])


def _b1(cell: CellRecord) -> Any:
    value, _, insufficient = p50(cell, 1)
    if value is None or not insufficient:
        return _r(value)
    return {"v": _r(value), "t": f"{_ms(value)}*", "h": "from too few samples"}


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


COST_TITLE = "training + compression seconds (the build: what the trade-off charges a variant)"
EVAL_TITLE = "export + latency measurement + attack + evaluation seconds (what benchmarking it cost)"

# Columns the cell table and the variant table share, defined once so that both say the same thing.
P50_MAX_COL = col("p50 max batch (ms)", "msb", "median latency at the largest measured batch (@batch)")
SIZE_COL = col("size", "bytes", "model size on disk")
MEMORY_COLS = [
    col("peak mem (MB)", "f1", "peak RSS of the measuring process"),
    col("model mem (MB)", "f1", "peak RSS over the same runtime loaded with no model: the model's share"),
]
COUNT_COLS = [col("params", "compact"), col("MACs", "compact")]
BUILD_COST_COL = col("train+compress (s)", "f1", COST_TITLE)
PAYOFF_COL = col("vs uncompressed", "verdict", "latency against the uncompressed model on the same runtime")


def cell_grid(runs: list[Run], tags: list[str]) -> Grid:
    """Every cell, one row each: the full results."""
    multi = len(runs) > 1
    columns = [col("run")] if multi else []
    columns += [
        col("cell", "id"),
        col("status", "status"),
        col("clean acc", "pct"),
        col("robust acc", "pct"),
        col("threat model"),
        col("p50 b1 (ms)", "ms", "median latency at batch 1; * from too few samples"),
        P50_MAX_COL,
        col("throughput (samples/s)", "compact"),
        *MEMORY_COLS,
        SIZE_COL,
        *COUNT_COLS,
        BUILD_COST_COL,
        col("export+measure+eval (s)", "f1", EVAL_TITLE),
        col("budget", "verdict", "accuracy budget against the uncompressed eager baseline"),
        PAYOFF_COL,
        col("reason / error"),
    ]
    rows = []
    for run, tag in zip(runs, tags, strict=True):
        for cell in run.cells:
            status = str(cell.status or "unknown")
            values: list[Any] = [tag] if multi else []
            if cell.status == "failed":
                note: Any = {"v": cell.cause, "d": str(cell.error or "")[-4000:]}
            else:
                note = str(cell.reason or "") or None
            values += [
                cell_id(cell),
                status,
                _r(num(cell.clean_accuracy)),
                _r(num(cell.robust_accuracy)),
                cell.threat_model,
                _b1(cell),
                _max_batch(cell),
                _r(num(cell.throughput_sps)),
                _r(num(cell.peak_memory_mb)),
                _r(num(cell.model_memory_mb)),
                _int(num(cell.model_size_bytes)),
                _int(num(cell.params)),
                _int(num(cell.macs)),
                _r(cost(cell, "train_s", "compress_s")),
                _r(cost(cell, *EVAL_COSTS)),
                budget_text(cell),
                payoff_text(cell),
                note,
            ]
            rows.append(values)
    # the row's class is its status: no per-row class to repeat
    return {"id": "cells", "columns": columns, "rows": rows, "class_col": columns.index(col("status", "status"))}


def attack_labels(all_variants: list[Variant]) -> list[str]:
    return sorted({a for v in all_variants for a in v.robust_by_attack})


def variant_grid(all_variants: list[Variant], multi: bool) -> Grid:
    """One row per model x recipe x compression x runtime, with its ratios against the baselines and one robust
    accuracy column per attack."""
    index = {v.key: v for v in all_variants}
    attacks = attack_labels(all_variants)
    columns = [col("run")] if multi else []
    columns += [col("model"), col("recipe"), col("compression"), col("runtime"), col("cells")]
    columns += [col("clean acc", "pct")]
    columns += [col(f"robust: {a}", "pct", f"robust accuracy under {a}") for a in attacks]
    columns += [
        col("acc drop (pts)", "f1", "clean accuracy of the uncompressed eager baseline minus this one's, in points"),
        col("p50 b1 (ms)", "ms", "median latency at batch 1"),
        P50_MAX_COL,
        col("speed-up vs uncompressed", "ratio", "p50 at batch 1 of the uncompressed model on this runtime / this"),
        col("speed-up vs eager", "ratio", "p50 at batch 1 of the uncompressed model on eager / this"),
        SIZE_COL,
        col("size vs uncompressed", "ratio", "this size / the uncompressed model's on this runtime"),
        col("size vs eager", "ratio", "this size / the uncompressed eager model's"),
        *MEMORY_COLS,
        *COUNT_COLS,
        BUILD_COST_COL,
        col("budget", "verdict", "accuracy budget against the uncompressed eager baseline, over the variant's cells"),
        col("gates", "verdict"),
        PAYOFF_COL,
    ]
    rows, classes = [], []
    for v in all_variants:
        counts: dict[str, int] = {}
        for cell in v.cells:
            counts[str(cell.status)] = counts.get(str(cell.status), 0) + 1
        status = "failed" if counts.get("failed") else "ok" if counts.get("ok") else "skipped"
        same, eager = baseline_of(v, index), baseline_of(v, index, EAGER)
        lat, (lat_max, batch) = v.p50_b1, v.p50_max
        size = v.size
        drop = None if eager is None or eager.clean is None or v.clean is None else (eager.clean - v.clean) * 100
        first_ok = v.ok[0] if v.ok else None
        robust = v.robust_by_attack
        values: list[Any] = [v.tag] if multi else []
        values += [v.model, v.recipe, v.compression, v.runtime, ", ".join(f"{n} {s}" for s, n in counts.items())]
        values += [_r(v.clean)]
        values += [_r(robust.get(a)) for a in attacks]
        values += [
            _r(drop, 3),
            _r(lat),
            None if lat_max is None else [_r(lat_max), batch],
            _r(ratio(same.p50_b1 if same else None, lat), 3),
            _r(ratio(eager.p50_b1 if eager else None, lat), 3),
            _int(size),
            _r(ratio(size, same.size if same else None), 3),
            _r(ratio(size, eager.size if eager else None), 3),
            _r(v.first(lambda c: num(c.peak_memory_mb))),
            _r(v.first(lambda c: num(c.model_memory_mb))),
            _int(v.first(lambda c: num(c.params))),
            _int(v.first(lambda c: num(c.macs))),
            _r(v.build_s),
            _variant_budget(v),
            ("failed: " + ", ".join(v.failed_gates))
            if v.failed_gates
            else (gates_text(first_ok) if first_ok else None),
            payoff_text(first_ok) if first_ok else None,
        ]
        rows.append(values)
        classes.append(status)
    return {"id": "variants", "columns": columns, "rows": rows, "classes": classes}


def _variant_budget(v: Variant) -> str | None:
    texts = [t for t in (budget_text(c) for c in v.ok) if t]
    for prefix in ("lost", "inconclusive"):
        worst = [t for t in texts if t.startswith(prefix)]
        if worst:
            return worst[0]
    return texts[0] if texts else None


def breakeven_grid(rows_in: list[BreakEven], multi: bool) -> Grid:
    columns = [col("run")] if multi else []
    columns += [
        col("variant"),
        col("baseline"),
        col("extra train+compress (s)", "f2", "train + compress seconds minus the baseline's"),
        col("saving per inference (ms)", "ms", "baseline p50 at batch 1 minus this variant's"),
        col("break-even (inferences)", "compact", "extra cost / saving: empty when it never pays for itself"),
        col("verdict"),
    ]
    rows, classes = [], []
    for b in sorted(rows_in, key=lambda b: (b.inferences is None, b.inferences or 0)):
        values: list[Any] = [b.variant.tag] if multi else []
        name = "/".join((b.variant.model, b.variant.recipe, b.variant.compression, b.variant.runtime))
        values += [name, f"{b.baseline.compression}/{b.baseline.runtime}", _r(b.extra_s), _r(b.saving_ms)]
        values += [b.inferences, b.text]
        rows.append(values)
        classes.append("ok" if b.inferences is not None else "skipped")
    return {"id": "breakeven", "columns": columns, "rows": rows, "classes": classes}


def comparison_grid(headers: list[str], rows_in: list[dict[str, Any]]) -> Grid:
    """`bench compare`'s rows (tables.comparison) as a grid: the text as shown, sorted by its raw value (severity,
    points, ratios), each cell with its class (a regressed metric in red); regression rows marked failed."""
    rows, classes = [], []
    for row in rows_in:
        values: list[Any] = []
        for cell in row["tds"]:
            text, sort, cls = cell["text"], cell["sort"], cell["cls"]
            cls = "" if cls == "id" else cls  # the cell column's format gives it that class
            if sort == text and not cls:
                values.append(text)
            else:
                value = {"v": None if sort == "" else sort, "t": text}
                values.append(value | {"c": cls} if cls else value)
        rows.append(values)
        classes.append("failed" if row["status"] == "regression" else "")
    columns = [col(h, "id" if h == "cell" else "text") for h in headers]
    return {"id": "comparison", "columns": columns, "rows": rows, "classes": classes}
