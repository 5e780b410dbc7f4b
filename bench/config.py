"""Typed configs from YAML inward: a mapping is parsed into a plugin's config dataclass, or a clear error.

Plugins declare their parameters as a dataclass; range checks live in its `__post_init__` and raise
`ConfigError(field, message)`. `parse_config` adds the type checks and the unknown-key check, so no raw dict
travels below the suite loader.
"""

from __future__ import annotations

import dataclasses
import fractions
import re
import types
import typing
from typing import Any, Literal, Union

from bench.errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


# A number written as a fraction of two decimals (`8/255`, `0.5 / 3`): where a float is expected.
FRACTION = re.compile(r"\s*[+-]?\d+(\.\d*)?\s*/\s*\d+(\.\d*)?\s*")


def coerce(value: Any, tp: Any, field: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints are accepted where numbers are)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, field)
            except ConfigError:
                continue
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (item_tp, *_) = typing.get_args(tp) or (Any,)
            items = [coerce(v, item_tp, f"{field}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and FRACTION.fullmatch(value):  # `8/255`, as papers write eps, parsed exactly
            numerator, denominator = (fractions.Fraction(part.strip()) for part in value.split("/"))
            if denominator == 0:
                raise ConfigError(field, f"division by zero in {value!r}")
            return float(numerator / denominator)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(field, f"expected {_type_name(tp)}, got {value!r}")


def config_fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def parse_config(cls: type, params: dict[str, Any]) -> Any:
    """Build the config dataclass `cls` from `params`, or raise ConfigError naming the field."""
    fields = config_fields(cls)
    for key in params:
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise ConfigError(str(key), f"unknown key '{key}'; valid keys: {valid}")
    values = {key: coerce(value, fields[key], key) for key, value in params.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a dataclass's own check without a field name
        raise ConfigError("", str(exc)) from exc


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved parameters of a config, JSON-ready (for records and cache keys)."""
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}


def check_range(
    field: str,
    value: float | int | None,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise ConfigError unless lo <(=) value <(=) hi; `None` values pass (they mean "not set")."""
    if value is None:
        return
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
        raise ConfigError(field, f"must be in {span}, got {value}")
