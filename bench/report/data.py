"""Loading run directories and reading cell fields defensively.

A run may still be in progress or may have been killed, and a record may come from an older or hand-edited file,
so any field of a cell can be missing or null (bench.record keeps a value of the wrong type out of the typed
fields); the accessors here turn all of that, and non-finite numbers, into None instead of raising.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.record import CellRecord, LatencyStats, read_records

# The axes a cell id is built from, in order; also the keys of a cell's "labels".
AXES = ("model", "recipe", "compression", "runtime", "attack")


@dataclass
class Run:
    """One run directory: its run.json (empty if missing or unreadable) and its complete cell records."""

    path: Path
    meta: dict[str, Any]
    cells: list[CellRecord] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    def counts(self) -> dict[str, int]:
        # Counted from cells.jsonl rather than taken from run.json, whose counts are only written at the end
        # and so are missing or stale while a run is in progress.
        counts = {"ok": 0, "skipped": 0, "failed": 0}
        for cell in self.cells:
            if cell.status in counts:
                counts[cell.status] += 1
        return counts


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    meta: Any = {}
    # A run killed before (or while) writing run.json still gets a report of its cells.
    with contextlib.suppress(OSError, json.JSONDecodeError):
        meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    cells = read_records(run_dir / "cells.jsonl")
    return Run(path=run_dir, meta=meta if isinstance(meta, dict) else {}, cells=cells)


def num(value: Any) -> float | None:
    """`value` as a finite float, or None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def cell_id(cell: CellRecord) -> str:
    return str(cell.cell_id or "?")


def label(cell: CellRecord, axis: str) -> str:
    """The human label of one axis: from "labels", else the axis' "name", else the cell id's part."""
    entry = getattr(cell, axis)
    value = (cell.labels or {}).get(axis) or (entry.get("name") if isinstance(entry, dict) else None)
    if value:
        return str(value)
    parts = cell_id(cell).split("/")
    index = AXES.index(axis)
    return parts[index] if len(parts) == len(AXES) else "?"


def config_key(cell: CellRecord) -> str:
    """model/recipe/compression/runtime: the cells that differ only by attack share one clean accuracy."""
    return "/".join(label(cell, axis) for axis in AXES[:-1])


def latency_batches(cell: CellRecord) -> dict[int, LatencyStats]:
    """latency_ms keyed by integer batch size, skipping keys that are not integers."""
    batches = {}
    for key, stats in (cell.latency_ms or {}).items():
        try:
            batches[int(key)] = stats
        except (TypeError, ValueError):
            continue
    return batches


def p50(cell: CellRecord, batch: int | None = 1) -> tuple[float | None, int | None, bool]:
    """(p50 ms, batch, insufficient) at `batch`, or at the largest measured batch when `batch` is None."""
    batches = latency_batches(cell)
    if not batches:
        return None, None, False
    if batch is None:
        batch = max(batches)
    stats = batches.get(batch)
    if stats is None:
        return None, None, False
    return num(stats.p50), batch, "p50" in (stats.insufficient or [])


def cost(cell: CellRecord, *names: str) -> float | None:
    """Sum of the named costs (all costs when none are named); None when none of them is known."""
    if cell.costs is None:
        return None
    costs = cell.costs.to_json()  # every cost, those a newer or older record has beside the known ones included
    values = [num(costs.get(n)) for n in (names or costs.keys())]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def ok_cells(runs: list[Run]) -> list[tuple[Run, CellRecord]]:
    return [(run, cell) for run in runs for cell in run.cells if cell.status == "ok"]
