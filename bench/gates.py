"""Suite gates: absolute limits a cell must meet, checked on every ok cell and recorded with it.

A suite's `gate:` section sets limits for every cell, and `select:` entries set limits for the cells a rule
matches (matched like `exclude` / `include` rules; a later entry overrides an earlier one, and both override the
top level, key by key). `bench run --gate KEY=VALUE` overrides the top-level limits.

    gate:
      max_latency_ms: {batch: 1, percentile: p99, value: 100}
      min_clean_accuracy: 0.9
      min_robust_accuracy: 0.3
      budget: 0.99            # fraction of the uncompressed baseline's accuracy kept
      max_size_mb: 50         # artifact bytes / 1e6
      max_memory_mb: 2000     # the cell's peak_memory_mb
      latency_threshold: 0.10 # for bench compare: relative slowdown
      accuracy_threshold: 0.02 # for bench compare: absolute accuracy drop
      select:
        - match: {model: resnet18, runtime: onnxruntime}
          max_latency_ms: {batch: 1, percentile: p99, value: 20}

Each gate's verdict is "pass", "fail" or "inconclusive". Accuracy gates respect sample size (bench.stats): an
accuracy below its limit fails only when the exact binomial test supports a true accuracy below it; the budget is
lost only when the exact McNemar test on the same samples supports a drop against the baseline cell. Latency,
size and memory are plain comparisons, except that a latency percentile measured from too few samples
(`insufficient`) is never gated on: its verdict is inconclusive. An inconclusive gate does not fail the run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from bench import stats
from bench.config import coerce
from bench.entries import RULE_KEYS, Choice
from bench.errors import BenchInputError, ConfigError
from bench.record import BudgetVerdict, CellRecord, GateVerdict
from bench.rules import matches, rule_matches

PERCENTILES = ("p50", "p90", "p95", "p99", "mean")
LIMIT_KEYS = ("max_latency_ms", "min_clean_accuracy", "min_robust_accuracy", "budget", "max_size_mb", "max_memory_mb")
THRESHOLD_KEYS = ("latency_threshold", "accuracy_threshold")  # read by bench compare, not per cell
GATE_KEYS = (*LIMIT_KEYS, *THRESHOLD_KEYS, "select")
VERDICTS = ("pass", "fail", "inconclusive")
CLI_SOURCE = "--gate"


@dataclasses.dataclass(frozen=True)
class LatencyLimit:
    batch: int
    percentile: str
    value: float  # ms


@dataclasses.dataclass(frozen=True)
class Limits:
    """The limits set at one place (the top level or one selection); None: not set there."""

    max_latency_ms: LatencyLimit | None = None
    min_clean_accuracy: float | None = None
    min_robust_accuracy: float | None = None
    budget: float | None = None
    max_size_mb: float | None = None
    max_memory_mb: float | None = None

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in LIMIT_KEYS if getattr(self, k) is not None]

    def to_dict(self, keep_none: bool = True) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in LIMIT_KEYS}
        out = {k: dataclasses.asdict(v) if isinstance(v, LatencyLimit) else v for k, v in out.items()}
        return out if keep_none else {k: v for k, v in out.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Selection:
    match: dict[str, Any]  # axis -> rule value, as in exclude / include
    limits: Limits


@dataclasses.dataclass(frozen=True)
class Limit:
    """One limit that applies to a cell, and where it was set ("gate", "gate.select[1]" or "--gate")."""

    value: Any  # a number, or a LatencyLimit
    source: str


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """A suite's `gate:` section: top-level limits, per-selection limits, and the thresholds of bench compare."""

    limits: Limits = Limits()
    select: tuple[Selection, ...] = ()
    latency_threshold: float = 0.10  # bench compare: relative slowdown that counts as a regression
    accuracy_threshold: float = 0.02  # bench compare: absolute accuracy drop that counts as a regression
    from_cli: frozenset[str] = frozenset()  # keys the command line set

    def for_cell(self, cell: Any) -> dict[str, Limit]:
        """The limits that apply to `cell` (anything with `choice(axis)`, e.g. a bench.matrix.Cell), by name."""
        combo: dict[str, Choice] = {axis: cell.choice(axis) for axis in RULE_KEYS}
        out = {k: Limit(v, CLI_SOURCE if k in self.from_cli else "gate") for k, v in self.limits.items()}
        for i, selection in enumerate(self.select):
            if rule_matches(selection.match, combo):
                out |= {k: Limit(v, f"gate.select[{i}]") for k, v in selection.limits.items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        """The resolved gate section, for run.json."""
        return {
            **self.limits.to_dict(),
            "latency_threshold": self.latency_threshold,
            "accuracy_threshold": self.accuracy_threshold,
            "select": [{"match": s.match, **s.limits.to_dict(keep_none=False)} for s in self.select],
        }


# -- parsing ------------------------------------------------------------------------------------------------------


def _number(value: Any, field: str, *, lo: float, hi: float | None = None, lo_open: bool = False) -> float:
    try:
        number = coerce(value, float, field)
    except ConfigError as exc:
        raise BenchInputError(str(exc), field=field) from None
    if not math.isfinite(number) or (number <= lo if lo_open else number < lo) or (hi is not None and number > hi):
        span = f"{'(' if lo_open else '['}{lo:g}, {'inf' if hi is None else f'{hi:g}'}]"
        raise BenchInputError(f"must be in {span}, got {value!r}", field=field)
    return number


def _latency(raw: Any, field: str, batch_sizes: list[int]) -> LatencyLimit:
    if not isinstance(raw, dict):
        raise BenchInputError(f"expected a mapping {{batch, percentile, value}}, got {raw!r}", field=field)
    for key in raw:
        if key not in ("batch", "percentile", "value"):
            raise BenchInputError(f"unknown key '{key}'; valid keys: batch, percentile, value", field=f"{field}.{key}")
    for key in ("batch", "percentile", "value"):
        if key not in raw:
            raise BenchInputError(f"missing '{key}'", field=f"{field}.{key}")
    batch = raw["batch"]
    if batch not in batch_sizes or isinstance(batch, bool):
        measured = ", ".join(str(b) for b in batch_sizes)
        raise BenchInputError(
            f"batch {batch!r} is not measured; measurement.batch_sizes: {measured}", field=f"{field}.batch"
        )
    if raw["percentile"] not in PERCENTILES:
        raise BenchInputError(
            f"expected one of {', '.join(PERCENTILES)}, got {raw['percentile']!r}", field=f"{field}.percentile"
        )
    return LatencyLimit(int(batch), raw["percentile"], _number(raw["value"], f"{field}.value", lo=0, lo_open=True))


def _limit(key: str, raw: Any, field: str, batch_sizes: list[int]) -> Any:
    if key == "max_latency_ms":
        return _latency(raw, field, batch_sizes)
    if key in ("min_clean_accuracy", "min_robust_accuracy"):
        return _number(raw, field, lo=0, hi=1)
    if key == "budget":
        return _number(raw, field, lo=0, hi=1, lo_open=True)
    return _number(raw, field, lo=0, lo_open=True)  # max_size_mb, max_memory_mb


def _limits(raw: Mapping[str, Any], prefix: str, batch_sizes: list[int]) -> Limits:
    # null: not set (as the resolved section in run.json writes a limit the suite did not set)
    return Limits(
        **{k: _limit(k, v, f"{prefix}{k}", batch_sizes) for k, v in raw.items() if k in LIMIT_KEYS and v is not None}
    )


def _selection(raw: Any, field: str, batch_sizes: list[int], choices: Any) -> Selection:
    if not isinstance(raw, dict):
        raise BenchInputError(f"expected a mapping with 'match' and limits, got {raw!r}", field=field)
    for key in raw:
        if key != "match" and key not in LIMIT_KEYS:
            valid = ", ".join(("match", *LIMIT_KEYS))
            raise BenchInputError(f"unknown key '{key}'; valid keys: {valid}", field=f"{field}.{key}")
    match = raw.get("match")
    if not isinstance(match, dict) or not match:
        raise BenchInputError(
            "expected a non-empty mapping such as {model: resnet18, runtime: onnxruntime}", field=f"{field}.match"
        )
    for axis, value in match.items():
        if axis not in RULE_KEYS:
            raise BenchInputError(f"unknown key '{axis}'; valid keys: {', '.join(RULE_KEYS)}", field=f"{field}.match")
        if not any(matches(c, value) for c in choices(axis)):
            listed = ", ".join(c.label for c in choices(axis))
            raise BenchInputError(f"{value!r} matches no {axis}; listed: {listed}", field=f"{field}.match.{axis}")
    limits = _limits(raw, f"{field}.", batch_sizes)
    if not limits.items():
        raise BenchInputError(f"names no limit; give one of {', '.join(LIMIT_KEYS)}", field=field)
    return Selection(dict(match), limits)


def parse_gate(raw: Any, batch_sizes: list[int], choices: Any) -> GateConfig:
    """The suite's `gate:` section; `choices(axis)` lists the suite's entries (to check `select` rules)."""
    if raw is None:
        return GateConfig()
    if not isinstance(raw, dict):
        raise BenchInputError(f"expected a mapping, got {raw!r}", field="gate")
    for key in raw:
        if key not in GATE_KEYS:
            raise BenchInputError(f"unknown key '{key}'; valid keys: {', '.join(GATE_KEYS)}", field=f"gate.{key}")
    select = raw.get("select") or []
    if not isinstance(select, list):
        raise BenchInputError(f"expected a list of mappings with 'match', got {select!r}", field="gate.select")
    return GateConfig(
        limits=_limits(raw, "gate.", batch_sizes),
        select=tuple(_selection(s, f"gate.select[{i}]", batch_sizes, choices) for i, s in enumerate(select)),
        **{
            k: _number(raw[k], f"gate.{k}", lo=0, hi=None if k == "latency_threshold" else 1)
            for k in THRESHOLD_KEYS
            if raw.get(k) is not None
        },
    )


def _cli_value(key: str, text: str, field: str) -> Any:
    if key == "max_latency_ms":
        parts = text.split(":")
        if len(parts) != 3:
            raise BenchInputError(f"expected BATCH:PERCENTILE:MS such as 1:p99:100, got {text!r}", field=field)
        batch, percentile, value = parts
        try:
            return {"batch": int(batch), "percentile": percentile, "value": float(value)}
        except ValueError:
            raise BenchInputError(
                f"expected BATCH:PERCENTILE:MS such as 1:p99:100, got {text!r}", field=field
            ) from None
    try:
        return float(text)
    except ValueError:
        raise BenchInputError(f"expected a number, got {text!r}", field=field) from None


def with_overrides(config: GateConfig, overrides: Iterable[str], batch_sizes: list[int]) -> GateConfig:
    """`config` with `--gate KEY=VALUE` options applied to its top level (later options win)."""
    limits: dict[str, Any] = {}
    thresholds: dict[str, float] = {}
    for option in overrides:
        key, sep, text = option.partition("=")
        key = key.strip()
        if not sep:
            raise BenchInputError(f"expected KEY=VALUE such as min_clean_accuracy=0.9, got {option!r}", field="--gate")
        valid = (*LIMIT_KEYS, *THRESHOLD_KEYS)
        if key not in valid:
            raise BenchInputError(f"unknown key '{key}'; valid keys: {', '.join(valid)}", field=f"--gate {key}")
        value = _cli_value(key, text.strip(), f"--gate {key}")
        if key in THRESHOLD_KEYS:
            thresholds[key] = _number(value, f"--gate {key}", lo=0, hi=None if key == "latency_threshold" else 1)
        else:
            limits[key] = _limit(key, value, f"--gate {key}", batch_sizes)
    if not limits and not thresholds:
        return config
    return dataclasses.replace(
        config,
        limits=dataclasses.replace(config.limits, **limits),
        from_cli=config.from_cli | set(limits),
        **thresholds,
    )


# -- evaluation ---------------------------------------------------------------------------------------------------


def _plain(value: float, limit: float, source: str, detail: str, **extra: Any) -> GateVerdict:
    verdict = "pass" if value <= limit else "fail"
    return GateVerdict(verdict=verdict, value=value, limit=limit, source=source, detail=detail, **extra)


def accuracy_gate(value: float, n: int, limit: float, source: str) -> GateVerdict:
    """An accuracy measured on n samples against an absolute minimum: fail only when the exact binomial test
    supports a true accuracy below the limit."""
    correct = round(value * n)
    p = stats.below_limit_p(correct, n, limit)
    lo, hi = stats.proportion_ci(correct, n)
    if value >= limit - 1e-12:
        verdict, why = "pass", ">="
    elif p <= stats.ALPHA:
        verdict, why = "fail", "<"
    else:
        verdict, why = "inconclusive", "< (not significant)"
    detail = f"{value:.4f} {why} {limit:g} ({correct}/{n} correct, p={p:.3g}, 95% CI [{lo:.3f}, {hi:.3f}])"
    return GateVerdict(
        verdict=verdict,
        value=value,
        limit=limit,
        source=source,
        detail=detail,
        n=n,
        correct=correct,
        p_value=p,
        ci=[lo, hi],
    )


def _latency_gate(record: CellRecord, limit: LatencyLimit, source: str) -> GateVerdict | None:
    stats_ = (record.latency_ms or {}).get(str(limit.batch))
    value = None if stats_ is None else getattr(stats_, limit.percentile)
    if value is None:
        return None
    where = {"batch": limit.batch, "percentile": limit.percentile, "n": stats_.n}
    if limit.percentile in (stats_.insufficient or []):
        detail = (
            f"b{limit.batch} {limit.percentile} {value:.3f} ms from {stats_.n} samples: too few for a "
            f"{limit.percentile} (see measurement.profile), not gated on"
        )
        return GateVerdict(
            verdict="inconclusive", value=value, limit=limit.value, source=source, detail=detail, **where
        )
    op = "<=" if value <= limit.value else ">"
    detail = f"b{limit.batch} {limit.percentile} {value:.3f} ms {op} {limit.value:g} ms"
    return _plain(value, limit.value, source, detail, **where)


def _budget_gate(budget: BudgetVerdict, source: str) -> GateVerdict | None:
    """The budget as a gate: the metric that decides it (lost before inconclusive before the smallest kept)."""
    metrics = {
        m: v
        for m, v in (("clean_accuracy", budget.clean_accuracy), ("robust_accuracy", budget.robust_accuracy))
        if v is not None and v.value is not None and v.baseline
    }
    if not metrics or budget.ratio is None:
        return None
    rank = {"lost": 0, "inconclusive": 1, "kept": 2}
    metric, v = min(metrics.items(), key=lambda mv: (rank.get(str(mv[1].verdict), 1), mv[1].value / mv[1].baseline))
    verdict = {"kept": "pass", "lost": "fail"}.get(str(v.verdict), "inconclusive")
    kept = v.value / v.baseline
    detail = (
        f"{metric} {v.value:.4f} is {kept:.2%} of the baseline's {v.baseline:.4f} (limit {budget.ratio * 100:g}%): "
        f"{v.verdict}"
    )
    if v.n is not None:
        detail += f" (n={v.n}, {v.b} lost / {v.c} gained samples, p={v.p_value:.3g})"
    return GateVerdict(
        verdict=verdict,
        value=kept,
        limit=budget.ratio,
        source=source,
        detail=detail,
        metric=metric,
        baseline=v.baseline,
        n=v.n,
        b=v.b,
        c=v.c,
        p_value=v.p_value,
        ci=v.ci,
    )


def evaluate_gates(record: CellRecord, limits: Mapping[str, Limit]) -> dict[str, GateVerdict]:
    """The verdict of each limit that applies to this ok record (a metric the record lacks is not gated)."""
    out: dict[str, GateVerdict | None] = {}
    for name, limit in limits.items():
        value, source = limit.value, limit.source
        if name == "max_latency_ms":
            out[name] = _latency_gate(record, value, source)
        elif name in ("min_clean_accuracy", "min_robust_accuracy"):
            accuracy = getattr(record, name.removeprefix("min_"))
            n = record.n_eval
            out[name] = None if accuracy is None or not n else accuracy_gate(accuracy, n, value, source)
        elif name == "budget":
            out[name] = None if record.budget is None else _budget_gate(record.budget, source)
        elif name == "max_size_mb" and record.model_size_bytes is not None:
            size = record.model_size_bytes / 1e6
            op = "<=" if size <= value else ">"
            out[name] = _plain(size, value, source, f"{size:.3f} MB {op} {value:g} MB")
        elif name == "max_memory_mb" and record.peak_memory_mb is not None:
            memory = record.peak_memory_mb
            op = "<=" if memory <= value else ">"
            out[name] = _plain(memory, value, source, f"peak {memory:.1f} MB {op} {value:g} MB")
    return {k: v for k, v in out.items() if v is not None}


# -- run level ----------------------------------------------------------------------------------------------------


def gate_counts(records: Iterable[CellRecord]) -> dict[str, int]:
    """{"checked": verdicts, "pass": n, "fail": n, "inconclusive": n} over the records' gates."""
    counts = dict.fromkeys(("checked", *VERDICTS), 0)
    for record in records:
        for gate in (record.gates or {}).values():
            counts["checked"] += 1
            if gate.verdict in VERDICTS:
                counts[str(gate.verdict)] += 1
    return counts


def gate_lines(records: Iterable[CellRecord]) -> list[str]:
    """One line per failed gate, then one per inconclusive gate: what `bench run` prints."""
    lines: dict[str, list[str]] = {"fail": [], "inconclusive": []}
    for record in records:
        for name, gate in (record.gates or {}).items():
            if gate.verdict in lines:
                word = "failed" if gate.verdict == "fail" else "inconclusive"
                lines[str(gate.verdict)].append(f"gate {word}: {record.cell_id}: {name}: {gate.detail}")
    return lines["fail"] + lines["inconclusive"]
