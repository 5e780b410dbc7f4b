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
import functools
import itertools

from bench.entries import AXES, RULE_KEYS, Choice
from bench.errors import BenchInputError
from bench.rules import resolve_include_value, rule_matches
from bench.suite import Suite


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

    @functools.cached_property  # computed once per cell: a large matrix asks for it many times
    def cell_id(self) -> str:
        parts = [getattr(self, axis).label for axis in AXES]
        return "/".join([self.dataset.label, *parts] if self.dataset_in_id else parts)

    def choice(self, axis: str) -> Choice:
        return getattr(self, axis)


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
    combos = [c for c in combos if not any(rule_matches(rule, c) for rule in suite.exclude)]
    original = list(combos)
    for i, rule in enumerate(suite.include):
        if any(rule_matches(rule, c) for c in original):
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
        combo = {a: resolve_include_value(suite.choices, a, rule[a], f"include[{i}].{a}") for a in AXES}
        combo["dataset"] = (
            resolve_include_value(suite.choices, "dataset", rule["dataset"], f"include[{i}].dataset")
            if "dataset" in rule
            else suite.datasets[0]
        )
        if combo not in combos:
            combos.append(combo)
    cells = []
    seen = set()
    reasons: dict[tuple[int, int], str | None] = {}  # a skip reason depends on the runtime and compression only
    for combo in combos:
        cell = Cell(**combo, dataset_in_id=len(suite.datasets) > 1)
        if cell.cell_id in seen:
            continue
        seen.add(cell.cell_id)
        pair = id(cell.runtime), id(cell.compression)
        if pair not in reasons:
            reasons[pair] = skip_reason(cell, device)
        cells.append(dataclasses.replace(cell, skip_reason=reasons[pair]) if reasons[pair] else cell)
    return cells


def select_shard(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """Shard I of N (1-based): a cost-balanced share that keeps the cells of one training (dataset, model, recipe)
    together, deterministic on every machine (bench.shards); in suite order, possibly empty."""
    if shard is None:
        return cells
    from bench.shards import select

    index, count = shard
    return select(cells, index, count)
