"""The suite's question and its answer: the table at the top of a report, shaped by the suite's `report.headline`.

A suite states its question in `description`; `report: {headline: {rows: [...], columns: [...]}}` says which table
answers it (bench.suite.HEADLINE_COLUMNS lists the columns). One row per variant of the run (model x recipe x
compression x runtime, its attacks merged), named by the `rows` axes, in the order the run produced them. A run
whose suite has no headline gets its question alone, above the generic headline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.record import CellRecord
from bench.report import tables
from bench.report.data import Run, label, num
from bench.report.views import BreakEven, Variant

Cell = tuple[str, str]  # (text, css class: "", "v-ok", "v-bad" or "v-unsure")
EMPTY: Cell = ("—", "")


@dataclass
class Answer:
    """One run's question and, where its suite asks for one, the table answering it."""

    tag: str
    question: str
    headers: list[str]
    rows: list[list[Cell]]
    labels: int = 0  # the first `labels` columns name the row (axis labels)


def _text(value: str | None) -> Cell:
    return (value, "") if value is not None else EMPTY


def _first(variant: Variant, get: Callable[[CellRecord], Any]) -> Any:
    return variant.first(get)


def _latency(variant: Variant, batch: str, stat: str) -> Cell:
    stats = _first(variant, lambda c: (c.latency_ms or {}).get(batch))
    if stats is None or num(getattr(stats, stat, None)) is None:
        return EMPTY
    text = tables.ms(getattr(stats, stat))
    if stat in (stats.insufficient or []):
        return (f"{text} ms (too few samples)", "v-unsure")
    return (f"{text} ms", "")


def _latency_gate(variant: Variant) -> Cell:
    verdicts = [c.gates["max_latency_ms"] for c in variant.ok if c.gates and c.gates.get("max_latency_ms")]
    if not verdicts:
        return EMPTY
    worst = next((v for order in ("fail", "inconclusive", "pass") for v in verdicts if v.verdict == order), None)
    if worst is None:
        return EMPTY
    css = {"pass": "v-ok", "fail": "v-bad"}.get(worst.verdict or "", "v-unsure")
    limit = f" ({worst.percentile} ≤ {worst.limit:g} ms)" if worst.limit is not None else ""
    return (f"{worst.verdict}{limit}", css)


def _fed(variant: Variant, key: str) -> Any:
    return _first(variant, lambda c: ((c.training.recipe_extra or {}) if c.training else {}).get(key))


def _bytes(variant: Variant, per_round: bool) -> Cell:
    sent, received, rounds = (_fed(variant, k) for k in ("bytes_sent", "bytes_received", "rounds"))
    if sent is None or received is None:
        return EMPTY
    total = sum(sent) + sum(received)
    if per_round:
        return _text(tables.human_bytes(total / rounds)) if rounds else EMPTY
    return _text(tables.human_bytes(total))


def _kept_round_accuracy(variant: Variant, key: str) -> Cell:
    values, kept = _fed(variant, key), _fed(variant, "kept_round")
    if not values or not kept or kept > len(values):
        return EMPTY
    return _text(tables.pct(values[kept - 1]))


def _drop(variant: Variant) -> Cell:
    if variant.clean is None or variant.robust is None:
        return EMPTY
    return (f"{(variant.clean - variant.robust) * 100:.1f} pts", "")


def _budget(variant: Variant) -> Cell:
    if variant.compression == "none":
        return ("baseline", "")  # what the budget is measured against
    kept = variant.within_budget
    if kept is None:
        return ("no verdict", "")
    return ("kept", "v-ok") if kept else ("lost", "v-bad")


def _seconds(value: float | None) -> Cell:
    return (f"{value:.1f} s", "") if value is not None else EMPTY


def _memory(variant: Variant) -> Cell:
    own = _first(variant, lambda c: num(c.model_memory_mb))
    peak = _first(variant, lambda c: num(c.peak_memory_mb))
    if own is None and peak is None:
        return EMPTY
    return (f"{own:.1f} MB (peak {peak:.0f})" if own is not None and peak is not None else f"{own or peak:.1f} MB", "")


COLUMNS: dict[str, tuple[str, Callable[[Variant, dict[tuple[str, ...], BreakEven]], Cell]]] = {
    "clean": ("clean accuracy", lambda v, b: _text(tables.pct(v.clean))),
    "robust": ("robust accuracy (strongest attack)", lambda v, b: _text(tables.pct(v.robust))),
    "drop": ("robustness drop (clean − robust)", lambda v, b: _drop(v)),
    "budget": ("accuracy budget", lambda v, b: _budget(v)),
    "size": ("artifact size", lambda v, b: _text(tables.human_bytes(v.size))),
    "params": ("parameters", lambda v, b: _text(tables.compact(_first(v, lambda c: num(c.params))))),
    "p50_b1": ("p50 at batch 1", lambda v, b: _latency(v, "1", "p50")),
    "p99_b1": ("p99 at batch 1", lambda v, b: _latency(v, "1", "p99")),
    "latency_gate": ("latency gate", lambda v, b: _latency_gate(v)),
    "throughput": (
        "throughput (largest batch)",
        lambda v, b: _text(f"{t:,.0f} samples/s" if (t := _first(v, lambda c: num(c.throughput_sps))) else None),
    ),
    "memory": ("model memory", lambda v, b: _memory(v)),
    "train_s": ("training time", lambda v, b: _seconds(_first(v, lambda c: num(c.costs.train_s) if c.costs else None))),
    "build_s": ("training + compression time", lambda v, b: _seconds(v.build_s)),
    "break_even": (
        "break-even",
        lambda v, b: _text(b[v.key].text if v.key in b else ("baseline" if v.compression == "none" else None)),
    ),
    "bytes_per_round": ("bytes per round (all clients, up + down)", lambda v, b: _bytes(v, per_round=True)),
    "bytes_total": ("bytes in total", lambda v, b: _bytes(v, per_round=False)),
    "kept_round": ("round kept", lambda v, b: _text(str(k) if (k := _fed(v, "kept_round")) else None)),
    "round_clean": ("kept round: clean (calibration split)", lambda v, b: _kept_round_accuracy(v, "round_accuracy")),
    "round_robust": (
        "kept round: robust (calibration split)",
        lambda v, b: _kept_round_accuracy(v, "round_robust_accuracy"),
    ),
}


def _attack_labels(variants: list[Variant]) -> list[str]:
    seen: dict[str, None] = {}
    for variant in variants:
        for cell in variant.ok:
            if (cell.attack or {}).get("name") not in (None, "none"):
                seen.setdefault(label(cell, "attack"), None)
    return list(seen)


def answers(runs: list[Run], tags: list[str], all_variants: list[Variant], breakevens: list[BreakEven]) -> list[Answer]:
    """Per run with a question (its suite's description): the question and the table its suite's headline asks
    for (no table where the suite asks for none)."""
    by_key = {b.variant.key: b for b in breakevens}
    out = []
    for run, tag in zip(runs, tags, strict=True):
        suite = run.meta.get("suite") or {}
        question = str(suite.get("description") or "").strip()
        spec = (suite.get("report") or {}).get("headline")
        if not question and not spec:
            continue
        if not spec:
            out.append(Answer(tag, question, [], []))
            continue
        variants = [v for v in all_variants if v.tag == tag and v.ok]
        axes = list(spec.get("rows", []))
        headers = list(axes)
        attacks = _attack_labels(variants)
        for column in spec.get("columns", []):
            if column == "robust_each":
                headers += [f"robust: {a}" for a in attacks]
            elif column in COLUMNS:
                headers.append(COLUMNS[column][0])
        rows = []
        for variant in variants:
            row: list[Cell] = [(getattr(variant, axis), "") for axis in axes]
            for column in spec.get("columns", []):
                if column == "robust_each":
                    each = variant.robust_by_attack
                    row += [_text(tables.pct(each.get(a))) for a in attacks]
                elif column in COLUMNS:
                    row.append(COLUMNS[column][1](variant, by_key))
            rows.append(row)
        out.append(Answer(tag, question, headers, rows, len(axes)))
    return out
