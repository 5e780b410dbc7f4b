"""What the report's views are computed from: variants, their baselines, the headline and the trade-offs.

A *variant* is one model x recipe x compression x runtime of one run: the cells that differ only by attack share
its clean accuracy, latency, size and costs, and each adds one robust accuracy. Baselines are variants too: the
uncompressed model on the same runtime (what a compression buys) and the uncompressed model on eager (what the
whole deployment buys), both of the same run, model and recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bench.record import CellRecord
from bench.report.data import Run, cell_id, cost, label, num, p50

# The compression label of the uncompressed model, and the runtime label of PyTorch eager.
UNCOMPRESSED = "none"
EAGER = "eager"
# Costs on either side of the trade-off: what building the variant cost, and what measuring and evaluating it did.
BUILD_COSTS = ("train_s", "compress_s")
EVAL_COSTS = ("export_s", "measure_s", "attack_s", "eval_s")


@dataclass
class Variant:
    """The cells of one run x model x recipe x compression x runtime (one per attack)."""

    tag: str
    model: str
    recipe: str
    compression: str
    runtime: str
    cells: list[CellRecord] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.tag, self.model, self.recipe, self.compression, self.runtime)

    @property
    def name(self) -> str:
        text = f"{self.model}/{self.recipe}/{self.compression}/{self.runtime}"
        return f"{self.tag}: {text}" if self.tag else text

    @property
    def ok(self) -> list[CellRecord]:
        return [c for c in self.cells if c.status == "ok"]

    def first(self, get: Any) -> Any:
        """The first known value of `get(cell)` over the variant's ok cells (they share it)."""
        for cell in self.ok:
            value = get(cell)
            if value is not None:
                return value
        return None

    @property
    def clean(self) -> float | None:
        return self.first(lambda c: num(c.clean_accuracy))

    @property
    def robust_by_attack(self) -> dict[str, float]:
        out = {}
        for cell in self.ok:
            value = num(cell.robust_accuracy)
            if value is not None and (cell.attack or {}).get("name") not in (None, "none"):
                out[label(cell, "attack")] = value
        return out

    @property
    def robust(self) -> float | None:
        """The worst robust accuracy over the variant's attacks: what the strongest attack run leaves."""
        values = list(self.robust_by_attack.values())
        return min(values) if values else None

    @property
    def p50_b1(self) -> float | None:
        return self.first(lambda c: p50(c, 1)[0])

    @property
    def p50_max(self) -> tuple[float | None, int | None]:
        for cell in self.ok:
            value, batch, _ = p50(cell, None)
            if value is not None:
                return value, batch
        return None, None

    @property
    def size(self) -> float | None:
        return self.first(lambda c: num(c.model_size_bytes))

    @property
    def build_s(self) -> float | None:
        return self.first(lambda c: cost(c, *BUILD_COSTS))

    @property
    def within_budget(self) -> bool | None:
        """False if any cell lost the accuracy budget, True if every cell with a verdict kept it, None if none has."""
        verdicts = [c.budget.within_budget for c in self.ok if c.budget is not None]
        verdicts = [v for v in verdicts if v is not None]
        if not verdicts:
            return None
        return all(verdicts)

    @property
    def failed_gates(self) -> list[str]:
        return sorted({name for c in self.cells for name, g in (c.gates or {}).items() if g.verdict == "fail"})

    @property
    def payoff(self) -> str | None:
        return self.first(lambda c: c.payoff.verdict if c.payoff is not None else None)


def variants(runs: list[Run], tags: list[str]) -> list[Variant]:
    """Every variant of the runs that has at least one cell, in first-seen order."""
    out: dict[tuple[str, ...], Variant] = {}
    for run, tag in zip(runs, tags, strict=True):
        for cell in run.cells:
            parts = [label(cell, axis) for axis in ("model", "recipe", "compression", "runtime")]
            key = (tag, *parts)
            if key not in out:
                out[key] = Variant(tag, *parts)
            out[key].cells.append(cell)
    return list(out.values())


def baseline_of(variant: Variant, index: dict[tuple[str, ...], Variant], runtime: str | None = None) -> Variant | None:
    """The uncompressed variant of the same run, model and recipe on `runtime` (the variant's own by default)."""
    key = (variant.tag, variant.model, variant.recipe, UNCOMPRESSED, runtime or variant.runtime)
    return index.get(key)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


@dataclass
class BreakEven:
    """A variant's build cost against what it saves per inference at batch 1, against its uncompressed baseline on
    the same runtime: after `inferences` inferences the saving has paid for the extra cost (None: never)."""

    variant: Variant
    baseline: Variant
    extra_s: float  # the variant's train + compress seconds minus the baseline's
    saving_ms: float  # the baseline's p50 at batch 1 minus the variant's
    inferences: int | None

    @property
    def text(self) -> str:
        if self.inferences is None:
            return "never (not faster)"
        return f"pays for itself after {self.inferences:,} inferences at batch 1"


def break_even(extra_s: float, saving_ms: float) -> int | None:
    """Inferences at which a saving of `saving_ms` per inference repays `extra_s` seconds (None: never)."""
    if saving_ms <= 0:
        return None
    if extra_s <= 0:
        return 0
    return math.ceil(extra_s / (saving_ms / 1000.0) - 1e-9)


def break_evens(all_variants: list[Variant]) -> list[BreakEven]:
    """One BreakEven per compressed variant whose baseline and both latencies and build costs are known."""
    index = {v.key: v for v in all_variants}
    out = []
    for variant in all_variants:
        if variant.compression == UNCOMPRESSED:
            continue
        base = baseline_of(variant, index)
        if base is None:
            continue
        lat, base_lat = variant.p50_b1, base.p50_b1
        build, base_build = variant.build_s, base.build_s
        if lat is None or base_lat is None or build is None:
            continue
        extra = build - (base_build or 0.0)
        saving = base_lat - lat
        out.append(BreakEven(variant, base, extra, saving, break_even(extra, saving)))
    return out


def pareto(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """The non-dominated (x, y, item) points for lower x and higher y, sorted by x: nothing else is both at least
    as fast (small) and at least as accurate, and better at one of them."""
    best: list[tuple[float, float, Any]] = []
    for x, y, item in sorted(points, key=lambda p: (p[0], -p[1])):
        if not best or y > best[-1][1]:
            best.append((x, y, item))
    return best


@dataclass
class Headline:
    """One model's answers: fastest within budget, most robust, smallest, and the robust-accuracy/latency front."""

    tag: str
    model: str
    fastest: Variant | None
    most_robust: Variant | None
    smallest: Variant | None
    frontier: list[Variant]
    frontier_metric: str  # "robust" or "clean": what the front trades against latency
    n_variants: int
    n_budget: int  # variants with a budget verdict
    speedup: float | None = None  # the fastest's speed-up at batch 1 against the uncompressed eager model


def headlines(all_variants: list[Variant]) -> list[Headline]:
    index = {v.key: v for v in all_variants}
    models: dict[tuple[str, str], list[Variant]] = {}
    for v in all_variants:
        if v.ok:
            models.setdefault((v.tag, v.model), []).append(v)
    out = []
    for (tag, model), group in models.items():
        within = [v for v in group if v.within_budget and v.p50_b1 is not None]
        fastest = min(within, key=lambda v: v.p50_b1) if within else None
        robust = [v for v in group if v.robust is not None]
        most_robust = max(robust, key=lambda v: (v.robust, -(v.p50_b1 or math.inf))) if robust else None
        sized = [v for v in group if v.size is not None]
        smallest = min(sized, key=lambda v: (v.size, -(v.clean or 0.0))) if sized else None
        metric = "robust" if robust else "clean"
        points = [(v.p50_b1, getattr(v, metric), v) for v in group]
        front = [item for _, _, item in pareto([p for p in points if p[0] is not None and p[1] is not None])]
        n_budget = sum(v.within_budget is not None for v in group)
        eager = baseline_of(fastest, index, EAGER) if fastest else None
        speedup = ratio(eager.p50_b1 if eager else None, fastest.p50_b1 if fastest else None)
        out.append(Headline(tag, model, fastest, most_robust, smallest, front, metric, len(group), n_budget, speedup))
    return out


@dataclass
class Problems:
    """Everything that went wrong, for the top of the page."""

    failures: list[dict[str, str]]  # {"run", "cell", "cause", "detail"}
    skips: list[dict[str, Any]]  # {"reason", "count", "cells"}
    gates: list[dict[str, str]]  # {"run", "cell", "gate", "detail"}
    checks: list[dict[str, str]]  # {"run", "cell", "name", "detail"}
    invariants: list[dict[str, str]]  # {"run", "check", "artifact", "detail", "masking"}
    no_payoff: list[dict[str, str]]  # {"run", "variant", "detail"}

    @property
    def any(self) -> bool:
        return bool(self.failures or self.gates or self.checks or self.invariants or self.no_payoff)


MASKING = ("mask", "query", "gradient")  # invariant names that point at gradient masking


def problems(runs: list[Run], tags: list[str], all_variants: list[Variant], checks: list[dict[str, str]]) -> Problems:
    failures, gates, invariants, no_payoff = [], [], [], []
    skips: dict[str, list[str]] = {}
    for run, tag in zip(runs, tags, strict=True):
        for cell in run.cells:
            if cell.status == "failed":
                detail = str(cell.error or "")
                failures.append({"run": tag, "cell": cell_id(cell), "cause": cell.cause, "detail": detail[-4000:]})
            elif cell.status == "skipped":
                skips.setdefault(str(cell.reason or "no reason recorded"), []).append(cell_id(cell))
            for name, gate in (cell.gates or {}).items():
                if gate.verdict == "fail":
                    gates.append(
                        {"run": tag, "cell": cell_id(cell), "gate": str(name), "detail": str(gate.detail or "")}
                    )
        found = run.meta.get("invariants") if isinstance(run.meta.get("invariants"), dict) else {}
        for v in found.get("violations") or []:
            if not isinstance(v, dict):
                continue
            check = str(v.get("check"))
            masking = any(word in check.lower() for word in MASKING)
            entry = {"run": tag, "check": check, "artifact": str(v.get("artifact")), "detail": str(v.get("detail"))}
            invariants.append(entry | {"masking": "yes" if masking else ""})
    invariants.sort(key=lambda v: v["masking"] != "yes")  # gradient masking above all
    for v in all_variants:
        if v.payoff == "does not pay off":
            cell = next(c for c in v.ok if c.payoff is not None and c.payoff.verdict == "does not pay off")
            ratios = ", ".join(f"batch {b}: {r:.2f}x" for b, r in (cell.payoff.ratio or {}).items())  # type: ignore[union-attr]
            base = cell.payoff.baseline_cell  # type: ignore[union-attr]
            no_payoff.append({"run": v.tag, "variant": v.name, "detail": f"latency / {base}'s: {ratios}"})
    skip_list = [{"reason": r, "count": len(c), "cells": c} for r, c in sorted(skips.items(), key=lambda i: -len(i[1]))]
    return Problems(failures, skip_list, gates, checks, invariants, no_payoff)
