"""The Cartesian product of a suite's axes, minus `exclude`, plus `include` (GitHub Actions matrix semantics).

- exclude: a rule removes every cell that matches all of its keys (a rule may name some axes only).
- include: a rule that matches an existing cell adds nothing (it only names axes it agrees with); a rule that
  matches none adds a new cell, which must then name every axis.
A rule value is a label (`prune-0.5`), a name (`prune`, matching every prune entry), a mapping with name and
parameters (`{name: prune, ratio: 0.5}`), or a list of these (any of them).

A cell that cannot run (an INT8 artifact on a runtime without INT8 kernels on this device, ...) stays in the
matrix with a skip reason decided by the plugins' declared capabilities: nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from bench.errors import BenchInputError
from bench.suite import AXES, PLURAL, RULE_KEYS, Choice, Suite, parse_entry


@dataclasses.dataclass(frozen=True)
class Cell:
    dataset: Choice
    model: Choice
    recipe: Choice
    compression: Choice
    runtime: Choice
    attack: Choice
    skip_reason: str | None = None
    dataset_in_id: bool = False  # only suites with several datasets prefix ids with the dataset

    @property
    def cell_id(self) -> str:
        parts = [getattr(self, axis).label for axis in AXES]
        return "/".join([self.dataset.label, *parts] if self.dataset_in_id else parts)

    def choice(self, axis: str) -> Choice:
        return getattr(self, axis)


def _matches(choice: Choice, value: Any) -> bool:
    if isinstance(value, list):
        return any(_matches(choice, v) for v in value)
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


def _rule_matches(rule: dict[str, Any], combo: dict[str, Choice]) -> bool:
    return all(_matches(combo[axis], value) for axis, value in rule.items())


def _resolve_include_value(suite: Suite, axis: str, value: Any, where: str) -> Choice:
    """The choice an include rule names: an existing entry if one matches, else a new one parsed from it."""
    existing = [c for c in suite.choices(axis) if _matches(c, value)]
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


def check_rules(suite: Suite) -> None:
    """Reject exclude values that match no entry (a typo would silently exclude nothing) and bad include values."""
    for i, rule in enumerate(suite.exclude):
        for axis, value in rule.items():
            if not any(_matches(c, value) for c in suite.choices(axis)):
                listed = ", ".join(c.label for c in suite.choices(axis))
                raise BenchInputError(f"{value!r} matches no {axis}; listed: {listed}", field=f"exclude[{i}].{axis}")
    for i, rule in enumerate(suite.include):
        for axis, value in rule.items():
            if isinstance(value, list):
                raise BenchInputError("an include rule names one entry per axis", field=f"include[{i}].{axis}")
            _resolve_include_value(suite, axis, value, f"include[{i}].{axis}")


def skip_reason(cell: Cell, device: str) -> str | None:
    """Why this combination cannot run on `device`, from the plugins' declared capabilities (None: it can)."""
    from bench.plugins import registry

    runtime_cls = registry("runtime").get(cell.runtime.name).obj
    dtype = "fp32"
    for step in cell.compression.chain:
        dtype = registry("compression").get(step.name).capabilities.get("dtype", dtype)
    return runtime_cls.unsupported(dtype, device) or runtime_cls(cell.runtime.config).unavailable(device)


def build_cells(suite: Suite, device: str = "cpu") -> list[Cell]:
    """Every cell of the suite, in a stable order (axis lists in suite order), each with its skip reason."""
    combos = [
        dict(zip(RULE_KEYS, values, strict=True))
        for values in itertools.product(*(suite.choices(a) for a in RULE_KEYS))
    ]
    combos = [c for c in combos if not any(_rule_matches(rule, c) for rule in suite.exclude)]
    original = list(combos)
    for i, rule in enumerate(suite.include):
        if any(_rule_matches(rule, c) for c in original):
            continue  # GitHub semantics: it only names values these cells already have
        missing = [a for a in AXES if a not in rule]
        if "dataset" not in rule and len(suite.datasets) > 1:
            missing.insert(0, "dataset")
        if missing:
            raise BenchInputError(
                f"matches no cell, so it adds one, which must name every axis (missing: {', '.join(missing)})",
                file=suite.file,
                field=f"include[{i}]",
            )
        combo = {a: _resolve_include_value(suite, a, rule[a], f"include[{i}].{a}") for a in AXES}
        combo["dataset"] = (
            _resolve_include_value(suite, "dataset", rule["dataset"], f"include[{i}].dataset")
            if "dataset" in rule
            else suite.datasets[0]
        )
        if combo not in combos:
            combos.append(combo)
    cells = []
    seen = set()
    for combo in combos:
        cell = Cell(**combo, dataset_in_id=len(suite.datasets) > 1)
        if cell.cell_id in seen:
            continue
        seen.add(cell.cell_id)
        cells.append(dataclasses.replace(cell, skip_reason=skip_reason(cell, device)))
    return cells


def select_shard(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """Shard I of N (1-based) takes every N-th cell, so shards are balanced across the axes."""
    if shard is None:
        return cells
    index, count = shard
    return cells[index - 1 :: count]
