"""Load a YAML suite into typed choices, or fail with one clear line naming the file and the field.

A suite lists, per axis, entries such as `pgd` or `{name: pgd, eps: [0.05, 0.1]}`. A list given where the
parameter is a scalar expands into one entry per value; a list of entries under `compressions` is a chain
applied in order (e.g. `[{name: prune, ratio: 0.5}, int8]`). `exclude` / `include` follow GitHub Actions'
matrix semantics (see bench.matrix).
"""

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from bench import userimport
from bench.config import check_range, config_fields, parse_config, to_dict
from bench.errors import BenchInputError, ConfigError, UnknownNameError

AXES = ("model", "recipe", "compression", "runtime", "attack")
PLURAL = {
    "model": "models",
    "recipe": "recipes",
    "compression": "compressions",
    "runtime": "runtimes",
    "attack": "attacks",
}


@dataclasses.dataclass(frozen=True)
class Choice:
    """One entry of an axis: a plugin name with its parsed config, or (compressions only) a chain of steps."""

    axis: str
    name: str
    label: str
    config: Any = None
    given: tuple[tuple[str, Any], ...] = ()  # the parameters the user wrote, for labels and rule matching
    steps: tuple[Choice, ...] = ()

    def record(self) -> dict[str, Any]:
        """The resolved entry as it goes into a cell record and into cache keys."""
        if self.steps:
            return {"name": self.name, "steps": [step.record() for step in self.steps]}
        return {"name": self.name, **to_dict(self.config)}

    @property
    def chain(self) -> tuple[Choice, ...]:
        return self.steps or (self,)


@dataclasses.dataclass
class MeasurementConfig:
    """How latency and memory are measured. A profile sets the stop rule; explicit values override it."""

    profile: Literal["smoke", "dev", "nightly", "publish"] = "dev"
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 64])
    threads: int | None = None  # None: all cores of the machine; pinned and recorded either way
    min_iterations: int | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    memory: bool = True  # measure peak memory in a fresh process per artifact

    def __post_init__(self) -> None:
        if not self.batch_sizes:
            raise ConfigError("batch_sizes", "needs at least one batch size")
        for i, b in enumerate(self.batch_sizes):
            check_range(f"batch_sizes[{i}]", b, lo=1)
        check_range("threads", self.threads, lo=1)
        check_range("min_iterations", self.min_iterations, lo=1)
        check_range("min_duration_s", self.min_duration_s, lo=0)
        check_range("max_duration_s", self.max_duration_s, lo=0, lo_open=True)


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
            "exclude": self.exclude,
            "include": self.include,
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
)
RULE_KEYS = ("dataset", *AXES)  # exclude / include rules may also name the dataset


def registry_for(axis: str):
    """The registry of an axis (imported lazily: plugins pull in torch)."""
    from bench import plugins

    return plugins.registry(axis)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(v) for v in value)
    return str(value)


def make_label(name: str, given: dict[str, Any], primary: str | None) -> str:
    """`prune` + {ratio: 0.5} -> `prune-0.5`: the name, then the plugin's primary parameter when it is given."""
    if primary and primary in given:
        return f"{name}-{_format_value(given[primary])}"
    return name


def disambiguate(choices: list[Choice], where: str) -> list[Choice]:
    """Entries sharing a label get the parameters that tell them apart: `standard-lr=0.1`, `standard-lr=0.01`.

    Labels name only what differs, so ids stay short; an explicit `label:` in the suite always wins.
    """
    groups: dict[str, list[int]] = {}
    for i, choice in enumerate(choices):
        groups.setdefault(choice.label, []).append(i)
    out = list(choices)
    for label, members in groups.items():
        if len(members) < 2:
            continue
        given = [dict(choices[i].given) for i in members]
        keys = [k for k in dict.fromkeys(k for g in given for k in g) if len({repr(g.get(k)) for g in given}) > 1]
        for i, params in zip(members, given, strict=True):
            extra = "-".join(f"{k}={_format_value(params[k])}" for k in keys if k in params)
            out[i] = dataclasses.replace(choices[i], label=f"{label}-{extra}" if extra else label)
    seen: set[str] = set()
    for choice in out:
        if choice.label in seen:
            raise BenchInputError(f"'{choice.label}' is listed twice (give one a 'label')", field=where)
        seen.add(choice.label)
    return out


def _is_list_type(tp: Any) -> bool:
    """list[...] or tuple[...], also inside `X | None`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_list_type(arg) for arg in typing.get_args(tp))
    return typing.get_origin(tp) in (list, tuple)


def _expand_params(config_cls: type, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product over list values given for scalar parameters (`ratio: [0.3, 0.5]` -> two entries)."""
    fields = config_fields(config_cls)
    options: list[list[tuple[str, Any]]] = []
    for key, value in params.items():
        field_is_list = _is_list_type(fields.get(key))
        if isinstance(value, list) and (not field_is_list or (value and isinstance(value[0], list))):
            if not value:
                raise ConfigError(key, "an empty list expands to no entry")
            options.append([(key, v) for v in value])
        else:
            options.append([(key, value)])
    return [dict(combo) for combo in itertools.product(*options)]


def parse_entry(axis: str, raw: Any, where: str) -> list[Choice]:
    """One YAML entry of an axis -> its expanded choices. `where` is the field path for errors."""
    if axis == "compression" and isinstance(raw, list):
        return _parse_chain(raw, where)
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise BenchInputError(f"expected a name or a mapping with 'name', got {raw!r}", field=where)
    params = dict(raw)
    name = params.pop("name", None)
    label = params.pop("label", None)
    if not isinstance(name, str):
        raise BenchInputError("missing 'name' (a string)", field=where)
    try:
        entry = registry_for(axis).get(name)
    except (UnknownNameError, ConfigError) as exc:
        raise BenchInputError(str(exc), field=f"{where}.name") from exc
    choices = []
    try:
        expanded = _expand_params(entry.config_cls, params)
    except ConfigError as exc:
        raise BenchInputError(str(exc), field=f"{where}.{exc.field}") from exc
    for given in expanded:
        try:
            config = parse_config(entry.config_cls, given)
        except ConfigError as exc:
            raise BenchInputError(str(exc), field=f"{where}.{exc.field}".rstrip(".")) from exc
        primary = entry.capabilities.get("primary")
        text = label if isinstance(label, str) and len(expanded) == 1 else make_label(name, given, primary)
        if label is not None and not isinstance(label, str):
            raise BenchInputError(f"expected a string, got {label!r}", field=f"{where}.label")
        choices.append(Choice(axis, name, text, config, tuple(given.items())))
    return choices


def _parse_chain(raw: list[Any], where: str) -> list[Choice]:
    if not raw:
        raise BenchInputError("a compression chain needs at least one step", field=where)
    per_step = [parse_entry("compression", step, f"{where}[{i}]") for i, step in enumerate(raw)]
    chains = []
    for steps in itertools.product(*per_step):
        names = [s.name for s in steps]
        if "none" in names and len(names) > 1:
            raise BenchInputError("'none' cannot be a step of a chain", field=where)
        for i, step in enumerate(steps[:-1]):
            if registry_for("compression").get(step.name).capabilities.get("must_be_last"):
                raise BenchInputError(f"'{step.name}' must be the last step of a chain", field=f"{where}[{i}]")
        chains.append(Choice("compression", "+".join(names), "+".join(s.label for s in steps), steps=tuple(steps)))
    return chains


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
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise BenchInputError(f"expected a non-negative integer, got {seed!r}", field="seed")
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
        exclude=rules["exclude"],
        include=rules["include"],
        description=str(data.get("description", "")),
    )
    from bench.matrix import check_rules

    check_rules(suite)  # a rule naming nothing that exists is a mistake, reported with its path
    return suite
