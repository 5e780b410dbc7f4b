"""One entry of an axis in a suite -> its typed choices: `pgd` or `{name: pgd, eps: [0.05, 0.1]}`.

A list given where the parameter is a scalar expands into one entry per value; a list of entries under
`compressions` is a chain applied in order (e.g. `[{name: prune, ratio: 0.5}, int8]`). Each choice gets a short
label for cell ids (`prune-0.5`): the name, then the plugin's declared `primary` parameter, then whatever tells
otherwise equal labels apart.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from typing import Any

from bench.config import FRACTION, config_fields, parse_config, to_dict
from bench.errors import BenchInputError, ConfigError, UnknownNameError
from bench.registry import Registry

AXES = ("model", "recipe", "compression", "runtime", "attack")
PLURAL = {
    "model": "models",
    "recipe": "recipes",
    "compression": "compressions",
    "runtime": "runtimes",
    "attack": "attacks",
}


RULE_KEYS = ("dataset", *AXES)  # exclude / include rules may also name the dataset


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


def registry_for(axis: str) -> Registry:
    """The registry of an axis (imported lazily: plugins pull in torch)."""
    from bench import plugins

    return plugins.registry(axis)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and FRACTION.fullmatch(value):
        return "".join(value.split())  # `8/255` as written, without spaces: ids have none
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
