"""Load a YAML suite into typed choices, or fail with one clear line naming the file and the field.

The entries of each axis are parsed by bench.entries, the exclude / include rules checked by bench.rules.

A suite lists, per axis, entries such as `pgd` or `{name: pgd, eps: [0.05, 0.1]}`. A list given where the
parameter is a scalar expands into one entry per value; a list of entries under `compressions` is a chain
applied in order (e.g. `[{name: prune, ratio: 0.5}, int8]`). `exclude` / `include` follow GitHub Actions'
matrix semantics (see bench.matrix).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml

from bench import userimport
from bench.config import check_range, parse_config, to_dict
from bench.entries import AXES, PLURAL, RULE_KEYS, Choice, disambiguate, parse_entry
from bench.errors import BenchInputError, ConfigError
from bench.gates import GateConfig, parse_gate
from bench.rules import check_rules


@dataclasses.dataclass
class MeasurementConfig:
    """How latency and memory are measured. A profile sets the stop rule; explicit values override it."""

    profile: Literal["smoke", "dev", "nightly", "publish"] = "dev"
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 64])
    threads: int | None = None  # None: all cores of the machine; pinned and recorded either way
    min_iterations: int | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    memory: bool = True  # measure peak memory (one process per artifact runs the memory pass)
    processes: int | None = None  # measurement processes per artifact; None: the profile's (smoke 1, dev 3, ...)
    remeasure: bool = False  # measure latency afresh even when the artifact's measurement is in the cache

    def __post_init__(self) -> None:
        if not self.batch_sizes:
            raise ConfigError("batch_sizes", "needs at least one batch size")
        for i, b in enumerate(self.batch_sizes):
            check_range(f"batch_sizes[{i}]", b, lo=1)
        check_range("threads", self.threads, lo=1)
        check_range("min_iterations", self.min_iterations, lo=1)
        check_range("min_duration_s", self.min_duration_s, lo=0)
        check_range("max_duration_s", self.max_duration_s, lo=0, lo_open=True)
        check_range("processes", self.processes, lo=1)


@dataclasses.dataclass
class LimitsConfig:
    """Time limits: a cell running longer than `cell_timeout_s` is stopped and recorded as failed (timeout)."""

    cell_timeout_s: float | None = None

    def __post_init__(self) -> None:
        check_range("cell_timeout_s", self.cell_timeout_s, lo=0, lo_open=True)


@dataclasses.dataclass
class EvaluationConfig:
    """How accuracy is scored, and the accuracy budget compressed cells are held to.

    `budget`: a compressed cell must keep this fraction of its uncompressed baseline's accuracy (same model and
    recipe, no compression, eager) clean and under the same attack; MLPerf's 99% rule by default.
    """

    batch_size: int = 256
    budget: float = 0.99

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, lo=1)
        check_range("budget", self.budget, lo=0, hi=1, lo_open=True)


@dataclasses.dataclass
class StageResources:
    """What one task of a stage kind asks a Ray cluster for (`bench run --executor ray`); the local executor runs
    stages in order and ignores it. `cpus` None: the threads a local run uses (measurement.threads, else the
    driver's cores), so a task's results equal a local run's; `gpus` None: 1 where the suite's device is cuda,
    else 0 (fractions share one GPU). A task runs as many torch threads as the CPUs it holds."""

    cpus: float | None = None
    gpus: float | None = None

    def __post_init__(self) -> None:
        check_range("cpus", self.cpus, lo=0)
        check_range("gpus", self.gpus, lo=0)


# The stage kinds a `resources:` section sizes; a measurement always holds its whole node while it times.
RESOURCE_STAGES = ("train", "compress", "export", "evaluate")


@dataclasses.dataclass
class ResourcesConfig:
    train: StageResources = dataclasses.field(default_factory=StageResources)
    compress: StageResources = dataclasses.field(default_factory=StageResources)
    export: StageResources = dataclasses.field(default_factory=StageResources)
    evaluate: StageResources = dataclasses.field(default_factory=StageResources)  # the attacks run here


@dataclasses.dataclass
class Suite:
    name: str
    file: str
    seed: int
    device: str
    datasets: list[Choice]
    axes: dict[str, list[Choice]]
    measurement: MeasurementConfig
    evaluation: EvaluationConfig
    exclude: list[dict[str, Any]]
    include: list[dict[str, Any]]
    description: str = ""
    limits: LimitsConfig = dataclasses.field(default_factory=lambda: LimitsConfig())
    gate: GateConfig = dataclasses.field(default_factory=GateConfig)  # limits a cell must meet (bench.gates)
    resources: ResourcesConfig = dataclasses.field(default_factory=ResourcesConfig)  # Ray tasks' requests
    report: ReportConfig = dataclasses.field(default_factory=lambda: ReportConfig())  # what its headline answers

    def choices(self, axis: str) -> list[Choice]:
        """The entries of an axis; `dataset` is an axis of the matrix too."""
        return self.datasets if axis == "dataset" else self.axes[axis]

    def resolved(self) -> dict[str, Any]:
        """The suite with every default filled in, for run.json."""
        return {
            "name": self.name,
            "file": self.file,
            "description": self.description,
            "seed": self.seed,
            "device": self.device,
            "datasets": [c.record() | {"label": c.label} for c in self.datasets],
            **{PLURAL[a]: [c.record() | {"label": c.label} for c in self.axes[a]] for a in AXES},
            "measurement": to_dict(self.measurement),
            "evaluation": to_dict(self.evaluation),
            "limits": to_dict(self.limits),
            "exclude": self.exclude,
            "include": self.include,
            "gate": self.gate.to_dict(),
            "resources": to_dict(self.resources),
            "report": to_dict(self.report),
        }


TOP_LEVEL_KEYS = (
    "name",
    "description",
    "seed",
    "device",
    "dataset",
    "datasets",
    *PLURAL.values(),
    "measurement",
    "evaluation",
    "exclude",
    "include",
    "limits",
    "gate",
    "resources",
    "report",
)

# The columns a suite's `report.headline` may ask for (bench.report.question computes each), and the axes its rows
# may be named by. The headline answers the suite's question (`description`) at the top of its report.
HEADLINE_COLUMNS = (
    "clean",  # clean accuracy
    "robust",  # robust accuracy under the strongest attack run on the variant
    "robust_each",  # one column per attack
    "drop",  # clean minus robust, in points
    "budget",  # whether the variant keeps the accuracy budget
    "size",  # the artifact's bytes
    "params",
    "p50_b1",  # latency at batch 1
    "p99_b1",
    "latency_gate",  # the verdict of the suite's max_latency_ms gate
    "throughput",  # samples per second at the largest batch
    "memory",  # the model's own share of the peak memory
    "train_s",  # training seconds
    "build_s",  # training plus compression seconds
    "break_even",  # inferences at batch 1 that repay the extra build cost
    "bytes_per_round",  # federated: bytes sent and received by all clients in a round
    "bytes_total",  # federated: over all rounds
    "kept_round",  # federated with keep: best
    "round_clean",  # federated: the kept round's clean accuracy on the calibration split
    "round_robust",  # federated: the kept round's robust accuracy there
)
HEADLINE_ROWS = ("model", "recipe", "compression", "runtime")


@dataclasses.dataclass
class HeadlineConfig:
    """The report's headline table: one row per variant, named by `rows` (axes), with `columns`."""

    rows: list[str] = dataclasses.field(default_factory=lambda: ["compression"])
    columns: list[str] = dataclasses.field(default_factory=lambda: ["clean", "robust", "p50_b1", "size"])

    def __post_init__(self) -> None:
        for field, values, valid in (("rows", self.rows, HEADLINE_ROWS), ("columns", self.columns, HEADLINE_COLUMNS)):
            unknown = [v for v in values if v not in valid]
            if unknown:
                raise ConfigError(field, f"unknown '{unknown[0]}'; valid: {', '.join(valid)}")
            if not values:
                raise ConfigError(field, "expected at least one")


@dataclasses.dataclass
class ReportConfig:
    headline: HeadlineConfig | None = None  # None: the report's generic headline only


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise BenchInputError("suite file not found" if not path.exists() else "not a file", file=str(path))
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BenchInputError(f"YAML syntax error: {problem}", file=str(path), field=where) from exc


def load_suite(path: str | Path) -> Suite:
    """Parse and validate a suite file. Raises BenchInputError (file + field + message) on any mistake."""
    path = Path(path)
    data = _read_yaml(path)
    try:
        with userimport.search_dir(path.parent):  # a user's `package.module:function` may live beside the suite
            return _parse_suite(data, path)
    except BenchInputError as exc:
        if exc.file is None:
            raise BenchInputError(exc.detail, file=str(path), field=exc.field) from None
        raise


def _section(data: dict[str, Any], key: str, cls: type) -> Any:
    raw = data.get(key) or {}
    if not isinstance(raw, dict):
        raise BenchInputError(f"expected a mapping, got {raw!r}", field=key)
    try:
        return parse_config(cls, raw)
    except ConfigError as exc:
        raise BenchInputError(str(exc), field=f"{key}.{exc.field}".rstrip(".")) from exc


def _resources(data: dict[str, Any]) -> ResourcesConfig:
    raw = data.get("resources") or {}
    if not isinstance(raw, dict):
        example = "{train: {cpus: 2, gpus: 1}}"
        raise BenchInputError(f"expected a mapping such as {example}, got {raw!r}", field="resources")
    stages = {}
    for kind in raw:
        if kind not in RESOURCE_STAGES:
            valid = ", ".join(RESOURCE_STAGES)
            raise BenchInputError(f"unknown stage '{kind}'; valid stages: {valid}", field=f"resources.{kind}")
        try:
            stages[kind] = _section(raw, kind, StageResources)
        except BenchInputError as exc:
            raise BenchInputError(exc.detail, field=f"resources.{exc.field}") from None
    return ResourcesConfig(**stages)


def _report(data: dict[str, Any]) -> ReportConfig:
    raw = data.get("report") or {}
    if not isinstance(raw, dict) or set(raw) - {"headline"}:
        raise BenchInputError("expected {headline: {rows: [compression], columns: [clean, robust]}}", field="report")
    headline = raw.get("headline")
    if headline is None:
        return ReportConfig()
    try:
        return ReportConfig(_section(raw, "headline", HeadlineConfig))
    except BenchInputError as exc:
        raise BenchInputError(exc.detail, field=f"report.{exc.field}") from None


def _parse_suite(data: Any, path: Path) -> Suite:
    if not isinstance(data, dict):
        raise BenchInputError("a suite is a YAML mapping with at least 'name' and 'models'")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise BenchInputError(f"unknown key '{key}'; valid keys: {', '.join(TOP_LEVEL_KEYS)}", field=str(key))
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise BenchInputError("missing 'name' (a string)", field="name")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise BenchInputError(f"expected an integer in [0, 2**32), got {seed!r}", field="seed")
    device = data.get("device", "cpu")
    if device not in ("cpu", "cuda", "auto"):
        raise BenchInputError(f"expected cpu, cuda or auto, got {device!r}", field="device")

    if "dataset" in data and "datasets" in data:
        raise BenchInputError("give either 'dataset' (one) or 'datasets' (a list), not both", field="datasets")
    if "datasets" in data:
        raw_datasets = data["datasets"]
        if not isinstance(raw_datasets, list) or not raw_datasets:
            raise BenchInputError(f"expected a non-empty list, got {raw_datasets!r}", field="datasets")
        datasets = [c for i, d in enumerate(raw_datasets) for c in parse_entry("dataset", d, f"datasets[{i}]")]
    else:
        datasets = parse_entry("dataset", data.get("dataset", "digits"), "dataset")
    datasets = disambiguate(datasets, "datasets")

    defaults = {"recipe": ["standard"], "compression": ["none"], "runtime": ["eager"], "attack": ["none"]}
    axes: dict[str, list[Choice]] = {}
    for axis in AXES:
        key = PLURAL[axis]
        raw = data.get(key, defaults.get(axis))
        if raw is None:
            raise BenchInputError(f"missing '{key}' (a list of {axis} names or entries)", field=key)
        if not isinstance(raw, list) or not raw:
            raise BenchInputError(f"expected a non-empty list, got {raw!r}", field=key)
        choices = [c for i, item in enumerate(raw) for c in parse_entry(axis, item, f"{key}[{i}]")]
        axes[axis] = disambiguate(choices, key)

    rules = {}
    for key in ("exclude", "include"):
        raw = data.get(key) or []
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            raise BenchInputError("expected a list of mappings such as {compression: int8, runtime: eager}", field=key)
        for i, rule in enumerate(raw):
            for axis in rule:
                if axis not in RULE_KEYS:
                    valid = ", ".join(RULE_KEYS)
                    raise BenchInputError(f"unknown key '{axis}'; valid keys: {valid}", field=f"{key}[{i}]")
        rules[key] = raw

    suite = Suite(
        name=name,
        file=str(path),
        seed=seed,
        device=device,
        datasets=datasets,
        axes=axes,
        measurement=_section(data, "measurement", MeasurementConfig),
        evaluation=_section(data, "evaluation", EvaluationConfig),
        limits=_section(data, "limits", LimitsConfig),
        exclude=rules["exclude"],
        include=rules["include"],
        description=str(data.get("description", "")),
        resources=_resources(data),
        report=_report(data),
    )
    check_rules(suite.exclude, suite.include, suite.choices)  # a rule naming nothing that exists is a mistake
    suite.gate = parse_gate(data.get("gate"), suite.measurement.batch_sizes, suite.choices)
    return suite


__all__ = ["AXES", "PLURAL", "RULE_KEYS", "Choice", "EvaluationConfig", "MeasurementConfig", "Suite", "load_suite",
           "parse_entry"]  # fmt: skip
