"""The stage graph of a suite's cells, keyed before anything runs: for an executor that runs stages as tasks with
their dependencies (bench.ray_executor) rather than in order in one process (bench.runner).

The keys are the pipeline's own (bench.pipeline.Pipeline): `KeyPlanner` is a Pipeline whose stages compute their
key and return without building or loading anything, so a key computed here is the key a stage run anywhere
commits under. Cells that share a prefix share its nodes: one node per unique (kind, key), whatever the number
of cells that need it.

In an eps sweep (bench.pipeline.Pipeline.previous_eps) the evaluate stage of each eps after the smallest continues
the next-smaller eps's evaluate stage on the same artifact: that stage is a node of its own (planned even when no
cell of the run names it), and the larger eps's evaluate node needs it, so a task gets it installed, not rebuilt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from bench.cache import stage_key
from bench.matrix import Cell
from bench.pipeline import BASELINE_COMPRESSION, BASELINE_RUNTIME, Pipeline, StageResult, is_baseline

# The stages a task computes, in pipeline order; measurement is planned per group of artifacts, not here.
CHAIN = ("data", "train", "compress", "export", "evaluate")

NodeId = tuple[str, str]  # (kind, key)


@dataclasses.dataclass(frozen=True)
class StageNode:
    """One unique stage: `cell` is a cell whose pipeline calls reach it (the baseline's twin cell for the
    uncompressed eager evaluation), `needs` the nodes before it in the chain, in order, and for the evaluate
    stage of an eps sweep's larger eps, last, the smaller eps's evaluate node."""

    kind: str
    key: str
    cell: Cell
    needs: tuple[NodeId, ...]

    @property
    def id(self) -> NodeId:
        return self.kind, self.key


@dataclasses.dataclass(frozen=True)
class CellPlan:
    """The nodes one (runnable) cell's record is assembled from."""

    cell: Cell
    nodes: dict[str, NodeId]  # chain kind -> node
    baseline: NodeId  # the uncompressed eager evaluation under the same attack (the cell's own for the baseline)


class KeyPlanner(Pipeline):
    """A Pipeline that computes each stage's key and returns at once: no build, no load, no log. Only the data
    stage's value (the splits, already loaded) is kept, since later keys hash what it holds."""

    def _stage(
        self,
        kind: str,
        config: Any,
        inputs: list[str],
        build: Callable[..., dict[str, Any]],
        load: Callable[..., Any] | None = None,
    ) -> StageResult:
        key = stage_key(kind, config, inputs)
        value = load(None, {}) if kind == "data" and load else None
        return StageResult(kind, key, self.cache.path(kind, key), {}, cache_hit=False, value=value)


def chain_keys(planner: KeyPlanner, cell: Cell) -> dict[str, str]:
    """The key of each chain stage of `cell`, in order."""
    return {kind: result.key for kind, result in planner.chain(cell).items()}


def baseline_cell(cell: Cell) -> Cell:
    """The cell of the uncompressed eager model under the same attack (Pipeline.baseline evaluates it)."""
    return dataclasses.replace(cell, compression=BASELINE_COMPRESSION, runtime=BASELINE_RUNTIME)


def plan_cells(planner: KeyPlanner, cells: list[Cell]) -> tuple[dict[NodeId, StageNode], list[CellPlan]]:
    """The unique stage nodes of `cells` (runnable ones: no skip reason) and each cell's plan."""
    nodes: dict[NodeId, StageNode] = {}

    def add(cell: Cell) -> dict[str, NodeId]:
        keys = chain_keys(planner, cell)
        ids = [(kind, keys[kind]) for kind in CHAIN]
        for i, node_id in enumerate(ids):
            if node_id in nodes:
                continue
            needs = tuple(ids[:i])
            before = planner.previous_eps(cell) if node_id[0] == "evaluate" else None
            if before is not None:  # an eps sweep: the smaller eps's evaluation first (planned once)
                needs += (add(before)["evaluate"],)
            nodes[node_id] = StageNode(node_id[0], node_id[1], cell, needs)
        return dict(zip(CHAIN, ids, strict=True))

    plans = []
    for cell in cells:
        own = add(cell)
        base = own if is_baseline(cell) else add(baseline_cell(cell))
        plans.append(CellPlan(cell, own, base["evaluate"]))
    return nodes, plans
