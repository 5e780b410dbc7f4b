"""One cell's record, typed: `CellRecord` is a line of cells.jsonl.

`to_json()` gives the JSON object the runner appends; `from_json()` reads one back, tolerantly, because a record
may come from an older run or a hand-edited file: a missing key takes its default, an unknown key is kept in
`extra`, and a value of the wrong type (a string where a number belongs) is kept, as found, in `extra` too while
its field stays None. `to_json()` writes both back, so reading and writing a record loses nothing.

Plugin-specific parts (checks, compression steps, lowering metadata, attack components, queries, agreement) stay
plain JSON dicts: their keys belong to the plugin that wrote them. docs/contracts.md describes every key.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from bench import jsonl

# Version of the run directory's format (run.json and cells.jsonl). A run.json without "schema_version" was
# written before versioning: version 1, whose records have the same shape as version 2's.
SCHEMA_VERSION = 2

T = TypeVar("T", bound="JsonObject")
Parser = Callable[[Any], Any]


# -- parsers: a JSON value -> a field's value, raising TypeError when the value has the wrong type -------------
# Every parser lets None through: any field may be null (a skipped cell, a metric that does not apply).


def _typed(*kinds: type) -> Parser:
    def parse(value: Any) -> Any:
        # bool is an int to Python but never a number (or a count) in a record
        if value is None or (isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)):
            return value
        raise TypeError(f"expected {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")

    return parse


def _obj(cls: type[JsonObject]) -> Parser:
    return lambda value: None if value is None else cls.from_json(value)


def _map(cls: type[JsonObject]) -> Parser:
    """{str: cls}; a map with an entry that is not an object is not a map of cls (so it is kept whole, as found)."""

    def parse(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise TypeError(f"expected a map of {cls.__name__} objects")
        return {k: cls.from_json(v) for k, v in value.items()}

    return parse


def _parser(hint: Any) -> Parser:
    """The parser for a field annotated `hint` (`X | None`, X a scalar, a dict, a list or a JsonObject)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint) or hint
    if origin is dict:
        value_type = typing.get_args(hint)[1]
        is_obj = isinstance(value_type, type) and issubclass(value_type, JsonObject)
        return _map(value_type) if is_obj else _typed(dict)
    if isinstance(origin, type) and issubclass(origin, JsonObject):
        return _obj(origin)
    if origin is float:
        # a number written without a fraction reads back as an int: kept as one, so that it is written back the same
        return _typed(int, float)
    if origin in (int, str, bool, list):
        return _typed(origin)
    return lambda value: value


def _dump(value: Any) -> Any:
    if isinstance(value, JsonObject):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


class JsonObject:
    """Base of the record's dataclasses: each field (but `extra`) is the JSON key of its name, in field order, and
    defaults to None; `extra` keeps, by key, what no field can hold. Subclasses may set:
    JSON_KEYS: field name -> JSON key, where they differ; OMIT_IF_NONE: fields left out of the JSON when None
    (keys that only some records have)."""

    JSON_KEYS: ClassVar[dict[str, str]] = {}
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset()
    extra: dict[str, Any]

    @classmethod
    def _schema(cls) -> list[tuple[str, str, Parser]]:
        """(field name, JSON key, parser) of each field but `extra`, in order."""
        return _schema(cls)

    def _omitted(self, name: str, value: Any) -> bool:
        return value is None and name in self.OMIT_IF_NONE

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, key, _ in self._schema():
            value = getattr(self, name)
            if value is None and key in self.extra:  # a value of the wrong type, kept as found, at its own place
                out[key] = self.extra[key]
            elif not self._omitted(name, value):
                out[key] = _dump(value)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_json(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise TypeError(f"a {cls.__name__} is a JSON object, not {type(data).__name__}")
        by_key = {key: (name, parse) for name, key, parse in cls._schema()}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key not in by_key:
                extra[key] = value
                continue
            name, parse = by_key[key]
            try:
                values[name] = parse(value)
            except TypeError:
                extra[key] = value
        return cls(**values, extra=extra)


@functools.cache
def _schema(cls: type[JsonObject]) -> list[tuple[str, str, Parser]]:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name != "extra"]  # type: ignore[arg-type]
    return [(f.name, cls.JSON_KEYS.get(f.name, f.name), _parser(hints[f.name])) for f in fields]


# -- the parts of a record ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class LatencyStats(JsonObject):
    """Latency of one batch size in ms (bench.measure.latency.summarize), without the worker's warm-up details."""

    p50: float | None = None
    # the p50's 95% confidence interval [lo, hi] over the pooled samples: order statistics, distribution-free (None
    # under 6 samples, and in records made before it)
    p50_ci: list[float] | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    n: int | None = None
    # the percentiles measured from fewer samples than LoadGen's bound: shown, flagged, never gated on
    insufficient: list[str] | None = None
    wall_p50: float | None = None  # CUDA only: host wall time beside the CUDA-event p50
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"wall_p50", "p50_ci"})


@dataclasses.dataclass
class Costs(JsonObject):
    """Seconds spent per stage: the training-time side of the trade-off (shared stages counted in full)."""

    train_s: float | None = None
    compress_s: float | None = None
    export_s: float | None = None
    measure_s: float | None = None
    attack_s: float | None = None
    eval_s: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class BaselineRef(JsonObject):
    """The uncompressed eager model's accuracies under the same attack: what the budget is measured against."""

    cell: str | None = None
    clean_accuracy: float | None = None
    robust_accuracy: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Payoff(JsonObject):
    """A compressed cell's latency against the uncompressed model on the same runtime (bench.payoff): "does not
    pay off" (slower beyond noise at some batch size), "faster" (at every batch size) or "no clear change"; per
    batch size the ratio of medians (cell / baseline) and the one-sided p-value of the verdict's direction."""

    verdict: str | None = None
    baseline_cell: str | None = None
    ratio: dict[str, float] | None = None
    p_value: dict[str, float] | None = None
    slower_batches: list[int] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class MeasurementInfo(JsonObject):
    """How latency and memory were measured, and the load-time figures beside them."""

    profile: str | None = None
    threads: int | None = None
    load_s: float | None = None
    first_call_ms: float | None = None
    baseline_rss_mb: float | None = None
    inference_rss_delta_mb: float | None = None
    peak_gpu_mb: float | None = None
    model_gpu_mb: float | None = None  # peak GPU allocation over the runtime's, with no model
    node: str | None = None  # the machine that timed it (a Ray run: host and node id)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrainingInfo(JsonObject):
    """The recipe's training cost (bench.training.TrainCost) and the training's peak memory."""

    seconds: float | None = None
    epochs: int | None = None
    samples_seen: int | None = None
    samples_per_s: float | None = None
    final_loss: float | None = None
    recipe_extra: dict[str, Any] | None = None  # TrainCost.extra: recipe-specific (e.g. early stopping)
    history: list[dict[str, Any]] | None = None  # TrainCost.history: per epoch {"epoch", "loss", "train_accuracy"}
    peak_memory_mb: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    JSON_KEYS: ClassVar[dict[str, str]] = {"recipe_extra": "extra"}  # "extra" is this class's bin of unknown keys


@dataclasses.dataclass
class ArtifactInfo(JsonObject):
    """The deployed artifact: its format, files (name -> bytes), main file's sha256 and path in the cache."""

    format: str | None = None
    files: dict[str, int] | None = None
    sha256: str | None = None
    path: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class MetricVerdict(JsonObject):
    """One accuracy against its baseline's (bench.checks.budget_verdict): "kept" when value >= limit (ratio *
    baseline); "lost" when below it and the exact McNemar test on the same samples supports a drop (p <= 0.05);
    else "inconclusive". `kept` is True / False / None for the three. b: samples right at the baseline and wrong
    in the cell, c: the reverse; ci: the 95% interval of value - baseline. Records written before these
    statistics have only value, baseline and kept."""

    value: float | None = None
    baseline: float | None = None
    kept: bool | None = None
    verdict: str | None = None  # "kept", "lost" or "inconclusive"
    limit: float | None = None
    n: int | None = None
    b: int | None = None
    c: int | None = None
    p_value: float | None = None
    ci: list[float] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"verdict", "limit", "n", "b", "c", "p_value", "ci"})


@dataclasses.dataclass
class BudgetVerdict(JsonObject):
    """Does the cell keep `ratio` of its baseline's accuracies (None for a metric that does not apply)?
    `within_budget` is False only when a metric is "lost"; `verdict` is "lost" if any metric is, else
    "inconclusive" if any is, else "kept"."""

    ratio: float | None = None
    clean_accuracy: MetricVerdict | None = None
    robust_accuracy: MetricVerdict | None = None
    within_budget: bool | None = None
    verdict: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"verdict"})


@dataclasses.dataclass
class GateVerdict(JsonObject):
    """One suite gate on one cell (bench.gates): "pass", "fail" or "inconclusive"; the value against the limit,
    where the limit was set, a sentence saying why, and the statistics the gate used (only those it used)."""

    verdict: str | None = None
    value: float | None = None
    limit: float | None = None
    source: str | None = None  # "gate", "gate.select[i]" or "--gate"
    detail: str | None = None
    batch: int | None = None  # max_latency_ms
    percentile: str | None = None  # max_latency_ms
    metric: str | None = None  # budget: the accuracy that decided it
    baseline: float | None = None  # budget: the baseline's accuracy of that metric
    n: int | None = None  # samples (eval samples, or latency samples)
    correct: int | None = None  # min_*_accuracy
    b: int | None = None  # budget: samples right at the baseline, wrong in the cell
    c: int | None = None  # budget: samples wrong at the baseline, right in the cell
    p_value: float | None = None
    ci: list[float] | None = None  # 95% interval: of the accuracy (min_*), of the difference (budget)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset(
        {"batch", "percentile", "metric", "baseline", "n", "correct", "b", "c", "p_value", "ci"}
    )


@dataclasses.dataclass
class CellRecord(JsonObject):
    """One cell of a run. The identity fields are always written; the outcome fields (from clean_accuracy to
    gates) are written, null where they do not apply, for an ok cell, and left out of a skipped or failed one."""

    cell_id: str | None = None
    # the resolved axis entries ({"name": ..., **config}), as in the suite
    model: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    compression: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None
    attack: dict[str, Any] | None = None
    labels: dict[str, str] | None = None  # axis (dataset included) -> label
    status: str | None = None  # "ok", "skipped" or "failed"
    reason: str | None = None  # why a cell was skipped
    error: str | None = None  # the traceback of a failed cell
    error_summary: str | None = None  # one line: the stage that failed and why (bench.assemble.error_summary)
    dataset: dict[str, Any] | None = None
    seed: int | None = None
    device: str | None = None
    # axis (dataset included) -> a short hash of its resolved parameters: two runs whose cells share an id but not
    # these hashes measured different settings (e.g. PGD steps 10 -> 20 under the same label)
    settings_hash: dict[str, str] | None = None

    clean_accuracy: float | None = None
    robust_accuracy: float | None = None
    threat_model: str | None = None
    surrogate: str | None = None
    n_eval: int | None = None
    latency_ms: dict[str, LatencyStats] | None = None  # batch size -> stats
    throughput_sps: float | None = None
    peak_memory_mb: float | None = None
    model_memory_mb: float | None = None  # the peak over the same runtime brought up with no model
    model_size_bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    costs: Costs | None = None
    attack_success_rate: float | None = None
    eps: float | None = None
    norm: str | None = None
    components: dict[str, Any] | None = None  # worst_case: each member attack's outcome
    queries: dict[str, Any] | None = None  # query attacks: queries per attacked sample
    agreement: dict[str, Any] | None = None  # with the float eager twin
    checks: dict[str, Any] | None = None  # check name -> {"ok", "detail"}
    baseline: BaselineRef | None = None
    measurement: MeasurementInfo | None = None
    training: TrainingInfo | None = None
    compression_steps: list[dict[str, Any]] | None = None
    lowering: dict[str, Any] | None = None  # the INT8 / FP16 export's metadata
    artifact: ArtifactInfo | None = None
    stages: dict[str, str] | None = None  # stage kind -> cache key
    budget: BudgetVerdict | None = None
    payoff: Payoff | None = None  # compressed cells: latency against the uncompressed model on the same runtime
    gates: dict[str, GateVerdict] | None = None  # gate name -> its verdict on this cell (bench.gates)

    wall_s: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def cause(self) -> str:
        """One line saying why a cell failed: its error_summary, or the last line of the traceback in records
        written before summaries."""
        if self.error_summary:
            return self.error_summary
        lines = [line.strip() for line in str(self.error or "").splitlines() if line.strip()]
        return lines[-1] if lines else "no error recorded"

    def _omitted(self, name: str, value: Any) -> bool:
        return value is None and self.status != "ok" and name in _outcome_fields()


@functools.cache
def _outcome_fields() -> frozenset[str]:
    """The fields from clean_accuracy to gates: what only a cell whose stages all ran has."""
    names = [f.name for f in dataclasses.fields(CellRecord)]
    return frozenset(names[names.index("clean_accuracy") : names.index("gates") + 1])


def read_records(path: Path) -> list[CellRecord]:
    """The records of a cells.jsonl (a missing file is empty; a torn line, or one that is not an object, skipped:
    a run killed mid-write still reads)."""
    return [CellRecord.from_json(d) for d in jsonl.read(path) if isinstance(d, dict)]
