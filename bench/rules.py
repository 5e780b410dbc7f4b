"""`exclude` / `include` rules of a suite (GitHub Actions' matrix semantics), matched against axis choices.

A rule value is a label (`prune-0.5`), a name (`prune`, matching every prune entry), a mapping with name and
parameters (`{name: prune, ratio: 0.5}`), or a list of these (any of them). Checked when the suite is loaded, so a
typo in a rule is an input error rather than a rule that silently matches nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.entries import PLURAL, Choice, parse_entry
from bench.errors import BenchInputError

ChoicesOf = Callable[[str], list[Choice]]  # axis -> the suite's choices on it (`Suite.choices`)


def matches(choice: Choice, value: Any) -> bool:
    if isinstance(value, list):
        return any(matches(choice, v) for v in value)
    if isinstance(value, str):
        return value in (choice.label, choice.name)
    if isinstance(value, dict):
        params = dict(value)
        name = params.pop("name", None)
        if name not in (choice.name, choice.label):
            return False
        resolved = choice.record()
        return all(resolved.get(k) == v for k, v in params.items())
    return False


def rule_matches(rule: dict[str, Any], combo: dict[str, Choice]) -> bool:
    return all(matches(combo[axis], value) for axis, value in rule.items())


def resolve_include_value(choices: ChoicesOf, axis: str, value: Any, where: str) -> Choice:
    """The choice an include rule names: an existing entry if one matches, else a new one parsed from it."""
    existing = [c for c in choices(axis) if matches(c, value)]
    if len(existing) == 1:
        return existing[0]
    if len(existing) > 1:
        labels = ", ".join(c.label for c in existing)
        raise BenchInputError(
            f"'{value}' matches several {PLURAL.get(axis, 'datasets')} ({labels}); name one label", field=where
        )
    parsed = parse_entry(axis, value, where)
    if len(parsed) != 1:
        raise BenchInputError("an include rule names one entry per axis (no list values)", field=where)
    return parsed[0]


def check_rules(exclude: list[dict[str, Any]], include: list[dict[str, Any]], choices: ChoicesOf) -> None:
    """Reject exclude values that match no entry (a typo would silently exclude nothing) and bad include values."""
    for i, rule in enumerate(exclude):
        for axis, value in rule.items():
            if not any(matches(c, value) for c in choices(axis)):
                listed = ", ".join(c.label for c in choices(axis))
                raise BenchInputError(f"{value!r} matches no {axis}; listed: {listed}", field=f"exclude[{i}].{axis}")
    for i, rule in enumerate(include):
        for axis, value in rule.items():
            if isinstance(value, list):
                raise BenchInputError("an include rule names one entry per axis", field=f"include[{i}].{axis}")
            resolve_include_value(choices, axis, value, f"include[{i}].{axis}")
