"""Compare a candidate run with a baseline run, cell by cell: what `bench compare` gates on.

Every cell of the baseline is walked (matched by cell id):

- missing in the candidate, or ok in the baseline and failed / skipped in the candidate: a regression;
- accuracy (clean, robust): a regression when the drop exceeds `accuracy` (absolute) *and* the exact McNemar test
  on the per-sample correctness of the same eval samples (correctness.jsonl) says the candidate is worse
  (one-sided p <= ALPHA); different eval samples are not comparable;
- latency (per batch size): a regression when the slowdown exceeds `latency` (relative) *and* a one-sided
  Mann-Whitney U test on per-process medians (timings.jsonl) says the candidate is slower; where both runs timed
  the reference workload, on medians divided by their process's reference time (machine drift cancels);
- size and memory: a regression when they grow beyond `size` / `memory` (relative).

Cells whose environment differs in what moves the numbers (device, CPU or GPU model, torch / ONNX Runtime version,
thread counts) are "not comparable" unless forced. Cells only in the candidate are "new". The formatting (terminal
table, JSON, Markdown) is in bench/compare_format.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bench import jsonl
from bench.errors import BenchInputError
from bench.evidence import CORRECTNESS_FILE, TIMINGS_FILE, Correctness, Timings
from bench.record import CellRecord, read_records
from bench.rundir import read_run_meta
from bench.stats import ALPHA, LATENCY_ALPHA, paired_accuracy, slower_p

CELLS_FILE = "cells.jsonl"
AXES = ("dataset", "model", "recipe", "compression", "runtime", "attack")

# Row statuses, most severe first: the order of every table.
REGRESSION, NOT_COMPARABLE, CHANGED, OK, NEW = "regression", "not comparable", "changed", "ok", "new"
SEVERITY = (REGRESSION, NOT_COMPARABLE, CHANGED, OK, NEW)

# Metric verdicts.
SAME, NA = "same", "n/a"
BETTER, WORSE_SMALL, WORSE_UNSURE = "better", "worse, below threshold", "worse, not significant"
FASTER, SLOWER_SMALL, SLOWER_UNSURE = "faster", "slower, below threshold", "slower, not significant"
SMALLER, LARGER_SMALL = "smaller", "larger, below threshold"
TOO_FEW = "not enough processes to judge"
NO_TIMINGS = "no raw timings"
ONE_SIDED = "measured in one run only"
UNTESTED = "no per-sample correctness"
NOT_JUDGED = "beyond threshold, not judged"  # a would-be regression in a cell that is not comparable

DEFAULT_THRESHOLDS = {"latency": 0.10, "accuracy": 0.02, "size": 0.10, "memory": 0.25}

# run.json "environment" keys that make latency (or everything) of two runs incomparable when they differ.
ENV_KEYS = {
    "cpu": "CPU",
    "gpu": "GPU",
    "torch": "torch",
    "onnxruntime": "ONNX Runtime",
    "torch_threads": "torch threads",
    "torch_interop_threads": "inter-op threads",
    "omp_num_threads": "OMP_NUM_THREADS",
}
ONNX_ONLY = {"onnxruntime"}  # keys that matter only to cells deployed with ONNX Runtime


# -- inputs -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunEvidence:
    """What compare reads of one run directory: run.json, the records, raw timings and per-sample correctness."""

    path: Path
    meta: dict[str, Any]
    records: dict[str, CellRecord]  # cell id -> record (the last one wins, as a resumed run may repeat a cell)
    timings: dict[str, Timings]  # measure stage key -> raw timings
    correctness: dict[str, Correctness]  # cell id -> per-sample correctness

    @property
    def environment(self) -> dict[str, Any]:
        env = self.meta.get("environment")
        return env if isinstance(env, dict) else {}

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    def timings_of(self, record: CellRecord) -> Timings | None:
        key = (record.stages or {}).get("measure")
        return self.timings.get(key) if isinstance(key, str) else None

    @classmethod
    def from_parts(cls, path: Path, meta: dict[str, Any], records: Iterable[CellRecord]) -> RunEvidence:
        """From a run already read (the report's tolerant reader): the evidence files are read from `path`."""
        path = Path(path)
        by_id = {str(r.cell_id): r for r in records if r.cell_id}
        return cls(path, meta if isinstance(meta, dict) else {}, by_id, _read_timings(path), _read_correctness(path))


def load_evidence(run_dir: str | Path) -> RunEvidence:
    """A run directory for comparison; BenchInputError (exit 2) when it is not one."""
    run_dir = Path(run_dir)
    return RunEvidence.from_parts(run_dir, read_run_meta(run_dir), read_records(run_dir / CELLS_FILE))


def _read_timings(run_dir: Path) -> dict[str, Timings]:
    out = {}
    for line in jsonl.read(run_dir / TIMINGS_FILE):
        try:
            item = Timings.from_json(line)
        except (KeyError, TypeError, AttributeError):
            continue
        if isinstance(item.processes, dict):
            out[str(item.measure_key)] = item
    return out


def _read_correctness(run_dir: Path) -> dict[str, Correctness]:
    out = {}
    for line in jsonl.read(run_dir / CORRECTNESS_FILE):
        try:
            item = Correctness.from_json(line)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        out[str(item.cell_id)] = item
    return out


@dataclasses.dataclass(frozen=True)
class Thresholds:
    latency: float  # relative slowdown (0.10: 10% slower)
    accuracy: float  # absolute drop (0.02: 2 points)
    size: float  # relative growth of the artifact's bytes
    memory: float  # relative growth of the peak memory
    source: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> "command line", "gate", "default"


def resolve_thresholds(candidate_meta: dict[str, Any], **given: float | None) -> Thresholds:
    """Each threshold from the command line, else the candidate suite's `gate:` section, else the default."""
    suite = candidate_meta.get("suite") if isinstance(candidate_meta.get("suite"), dict) else {}
    gate = suite.get("gate") if isinstance(suite.get("gate"), dict) else {}
    values, source = {}, {}
    for name, default in DEFAULT_THRESHOLDS.items():
        value, where = given.get(name), "command line"
        if value is None:
            value, where = gate.get(f"{name}_threshold"), "gate"
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                value, where = default, "default"
        if value < 0:
            raise BenchInputError(f"must be >= 0, got {value}", field=f"--{name}-threshold")
        values[name], source[name] = float(value), where
    return Thresholds(**values, source=source)


# -- rows ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class AccuracyChange:
    metric: str  # "clean" or "robust"
    baseline: float | None
    candidate: float | None
    diff_points: float | None  # (candidate - baseline) * 100
    p_value: float | None  # exact McNemar, one-sided (candidate worse); None when not tested
    discordant: tuple[int, int] | None  # (right before / wrong after, wrong before / right after)
    verdict: str
    notable: bool = False


@dataclasses.dataclass
class LatencyChange:
    batch: str
    baseline_p50: float | None  # ms, from the records
    candidate_p50: float | None
    raw_ratio: float | None  # candidate / baseline: medians of the per-process medians (else of the p50s)
    normalised_ratio: float | None  # the same on per-process medians / that process's reference time
    judged_on: str | None  # "raw", "raw and normalised", or None (not tested)
    processes: tuple[int, int]  # measurement processes of the baseline and the candidate
    p_value: float | None  # Mann-Whitney U, one-sided (candidate slower)
    verdict: str
    notable: bool = False

    @property
    def ratio(self) -> float | None:
        """The normalised ratio where there is one (it cancels machine drift), else the raw one."""
        return self.normalised_ratio if self.normalised_ratio is not None else self.raw_ratio


@dataclasses.dataclass
class ResourceChange:
    metric: str  # "size" (bytes) or "memory" (MB)
    baseline: float | None
    candidate: float | None
    change: float | None  # relative: candidate / baseline - 1
    verdict: str
    notable: bool = False


@dataclasses.dataclass
class SettingsDiff:
    axis: str
    params: dict[str, tuple[Any, Any]]  # parameter -> (baseline, candidate); empty when only the hash tells


@dataclasses.dataclass
class CellComparison:
    cell_id: str
    status: str  # one of SEVERITY
    baseline_status: str | None
    candidate_status: str | None
    problems: list[str] = dataclasses.field(default_factory=list)  # the regressions, in words
    reasons: list[str] = dataclasses.field(default_factory=list)  # why it is not comparable
    notes: list[str] = dataclasses.field(default_factory=list)  # what else changed (makes the row "changed")
    info: list[str] = dataclasses.field(default_factory=list)  # remarks that change nothing (skipped in both)
    accuracy: list[AccuracyChange] = dataclasses.field(default_factory=list)
    latency: list[LatencyChange] = dataclasses.field(default_factory=list)
    resources: list[ResourceChange] = dataclasses.field(default_factory=list)
    settings: list[SettingsDiff] = dataclasses.field(default_factory=list)
    timings_fresh: tuple[bool | None, bool | None] = (None, None)  # latency measured in the run (not cached)?


@dataclasses.dataclass
class EnvDiff:
    key: str
    label: str
    baseline: Any
    candidate: Any


@dataclasses.dataclass
class Comparison:
    baseline: str
    candidate: str
    thresholds: Thresholds
    forced: bool
    environment: list[EnvDiff]
    rows: list[CellComparison]

    @property
    def regressions(self) -> list[CellComparison]:
        return [r for r in self.rows if r.status == REGRESSION]

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.rows) for status in SEVERITY}

    def summary(self) -> dict[str, Any]:
        counts = self.counts()
        untestable = sum(any(lat.verdict == TOO_FEW for lat in r.latency) for r in self.rows)
        return {
            "baseline_cells": len(self.rows) - counts[NEW],
            "regressions": counts[REGRESSION],
            "not_comparable": counts[NOT_COMPARABLE],
            "changed": counts[CHANGED],
            "ok": counts[OK],
            "new": counts[NEW],
            "latency_not_judged": untestable,
            "exit_code": 1 if counts[REGRESSION] else 0,
        }


# -- the walk -----------------------------------------------------------------------------------------------------


def compare_runs(
    baseline: RunEvidence, candidate: RunEvidence, thresholds: Thresholds, force: bool = False
) -> Comparison:
    """Every baseline cell judged against the candidate's, then the candidate's new cells; sorted by severity."""
    env = environment_diffs(baseline, candidate)
    rows = []
    for cell_id, old in baseline.records.items():
        rows.append(
            _compare_cell(cell_id, old, candidate.records.get(cell_id), baseline, candidate, env, thresholds, force)
        )
    for cell_id, new in candidate.records.items():
        if cell_id not in baseline.records:
            rows.append(CellComparison(cell_id, NEW, None, new.status))
    rows.sort(key=lambda r: SEVERITY.index(r.status))  # stable: run order within a status
    return Comparison(str(baseline.path), str(candidate.path), thresholds, force, env, rows)


def environment_diffs(baseline: RunEvidence, candidate: RunEvidence) -> list[EnvDiff]:
    """The run-level differences that move numbers; a key missing on either side (an older run) is not one."""
    out = []
    old_device, new_device = baseline.meta.get("device"), candidate.meta.get("device")
    if old_device is not None and new_device is not None and old_device != new_device:
        out.append(EnvDiff("device", "device", old_device, new_device))
    for key, label in ENV_KEYS.items():
        before, after = baseline.environment.get(key), candidate.environment.get(key)
        if key in baseline.environment and key in candidate.environment and before != after:
            out.append(EnvDiff(key, label, before, after))
    return out


def _uses_onnx(record: CellRecord) -> bool:
    runtime = record.runtime or {}
    return runtime.get("name") == "onnxruntime" or (record.artifact is not None and record.artifact.format == "onnx")


def _cell_env_reasons(old: CellRecord, new: CellRecord, env: list[EnvDiff]) -> list[str]:
    reasons = [
        f"{d.label} differs: {d.baseline} -> {d.candidate}"
        for d in env
        if d.key not in ONNX_ONLY or _uses_onnx(old) or _uses_onnx(new)
    ]
    if old.device and new.device and old.device != new.device and not any(d.key == "device" for d in env):
        reasons.append(f"device differs: {old.device} -> {new.device}")
    old_threads = old.measurement.threads if old.measurement else None
    new_threads = new.measurement.threads if new.measurement else None
    if old_threads is not None and new_threads is not None and old_threads != new_threads:
        reasons.append(f"measurement threads differ: {old_threads} -> {new_threads}")
    return reasons


def _compare_cell(
    cell_id: str,
    old: CellRecord,
    new: CellRecord | None,
    baseline: RunEvidence,
    candidate: RunEvidence,
    env: list[EnvDiff],
    thresholds: Thresholds,
    force: bool,
) -> CellComparison:
    if new is None:
        return CellComparison(cell_id, REGRESSION, old.status, None, problems=["missing"])
    row = CellComparison(cell_id, OK, old.status, new.status, settings=settings_diffs(old, new))
    env_reasons = _cell_env_reasons(old, new, env)
    if force:
        row.notes += [f"{r} (compared anyway: --force)" for r in env_reasons]
        env_reasons = []
    if row.settings:
        row.notes.append("settings differ: " + "; ".join(settings_text(s) for s in row.settings))

    if new.status == "failed" and old.status != "failed":
        row.problems.append(f"now failed: {new.cause}")
    elif new.status == "skipped" and old.status == "ok":
        if env_reasons:
            row.reasons += [*env_reasons, f"now skipped: {new.reason}"]
        else:
            row.problems.append(f"now skipped: {new.reason}")
    elif old.status == "failed" and new.status == "failed":
        row.reasons.append(f"failed in both runs: {new.cause}")
    elif old.status != "ok" or new.status != "ok":
        was = old.reason if old.status == "skipped" else old.cause
        if old.status == new.status:
            row.info.append(f"{new.status} in both runs: {new.reason or new.cause}")
        else:
            row.notes.append(f"now {new.status} (was {old.status}: {was})")
    else:
        _compare_numbers(row, old, new, baseline, candidate, thresholds)
        row.reasons += env_reasons
        if env_reasons:
            for metric in (*row.accuracy, *row.latency, *row.resources):
                if metric.verdict == REGRESSION:
                    metric.verdict = NOT_JUDGED
            row.problems = []
    row.status = _row_status(row)
    return row


def _row_status(row: CellComparison) -> str:
    if row.problems:
        return REGRESSION
    if row.reasons:
        return NOT_COMPARABLE
    metrics = (*row.accuracy, *row.latency, *row.resources)
    if row.notes or any(m.notable for m in metrics):
        return CHANGED
    return OK


def _compare_numbers(
    row: CellComparison,
    old: CellRecord,
    new: CellRecord,
    baseline: RunEvidence,
    candidate: RunEvidence,
    thresholds: Thresholds,
) -> None:
    old_bits, new_bits = baseline.correctness.get(row.cell_id), candidate.correctness.get(row.cell_id)
    if not same_samples(old_bits, new_bits):
        row.reasons.append("different eval samples (eval_sha256 differs): accuracy not comparable")
    for metric in ("clean", "robust"):
        change = accuracy_change(metric, old, new, old_bits, new_bits, thresholds.accuracy)
        if change.verdict == NA:
            continue
        row.accuracy.append(change)
        if change.verdict == REGRESSION:
            row.problems.append(
                f"{metric} accuracy {change.diff_points:+.1f} pts "
                f"({pct(change.baseline)} -> {pct(change.candidate)}, McNemar {format_p(change.p_value)})"
            )

    old_t, new_t = baseline.timings_of(old), candidate.timings_of(new)
    row.timings_fresh = (old_t.fresh if old_t else None, new_t.fresh if new_t else None)
    if old_t and new_t and old_t.measure_key == new_t.measure_key and not new_t.fresh:
        row.notes.append("latency: the candidate reused the baseline's measurement (shared cache)")
    batches = set(old.latency_ms or {}) | set(new.latency_ms or {})
    for batch in sorted(batches, key=_batch_order):
        change = latency_change(batch, old, new, old_t, new_t, thresholds.latency)
        row.latency.append(change)
        if change.verdict == REGRESSION:
            norm = f", normalised x{change.normalised_ratio:.2f}" if change.normalised_ratio is not None else ""
            row.problems.append(
                f"latency b{batch} x{change.raw_ratio:.2f}{norm} "
                f"(Mann-Whitney {format_p(change.p_value)}, {change.processes[0]} vs {change.processes[1]} processes)"
            )

    for metric, before, after, threshold in (
        ("size", old.model_size_bytes, new.model_size_bytes, thresholds.size),
        ("memory", old.peak_memory_mb, new.peak_memory_mb, thresholds.memory),
    ):
        change = resource_change(metric, before, after, threshold)
        if change.verdict == NA:
            continue
        row.resources.append(change)
        if change.verdict == REGRESSION:
            row.problems.append(
                f"{metric} {change.change * 100:+.1f}% ({amount(metric, before)} -> {amount(metric, after)})"
            )


def same_samples(old: Correctness | None, new: Correctness | None) -> bool:
    """False only when both runs recorded their eval samples and these differ (another fingerprint or size)."""
    if old is None or new is None:
        return True
    return old.eval_sha256 == new.eval_sha256 and len(old.clean) == len(new.clean)


# -- the judgements -----------------------------------------------------------------------------------------------


def accuracy_change(
    metric: str,
    old: CellRecord,
    new: CellRecord,
    old_bits: Correctness | None,
    new_bits: Correctness | None,
    threshold: float,
) -> AccuracyChange:
    before, after = _num(getattr(old, f"{metric}_accuracy")), _num(getattr(new, f"{metric}_accuracy"))
    if before is None and after is None:
        return AccuracyChange(metric, None, None, None, None, None, NA)
    if before is None or after is None:
        return AccuracyChange(metric, before, after, None, None, None, NA, notable=True)
    diff = after - before
    change = AccuracyChange(metric, before, after, diff * 100, None, None, SAME)
    if not same_samples(old_bits, new_bits):
        change.verdict, change.notable = NOT_COMPARABLE, True
        return change
    a = getattr(old_bits, metric, None) if old_bits else None
    b = getattr(new_bits, metric, None) if new_bits else None
    tested = a is not None and b is not None
    if tested:
        paired = paired_accuracy(a, b)
        change.p_value, change.discordant = paired.p_value, (paired.b, paired.c)
    dropped = -diff > threshold + 1e-12
    if diff == 0 and (not tested or change.discordant == (0, 0)):
        return change  # the same accuracy (and, where known, the same samples right)
    change.notable = True
    if diff > 0:
        change.verdict = BETTER
    elif not tested:
        change.verdict = UNTESTED
    elif dropped and change.p_value is not None and change.p_value <= ALPHA:
        change.verdict = REGRESSION
    elif dropped:
        change.verdict = WORSE_UNSURE
    elif diff < 0:
        change.verdict = WORSE_SMALL
    else:
        change.verdict = SAME  # same accuracy, other samples right: shown as notable
    return change


def _medians(timings: Timings, batch: str) -> tuple[list[float], list[float] | None]:
    """Per-process medians at `batch`, and the same divided by each process's reference time (None when a
    process has no reference time)."""
    processes = timings.processes.get(batch) or []
    if processes and not isinstance(processes[0], list):  # one flat list: a single process
        processes = [processes]
    reference = timings.reference_ms
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        reference = [reference]
    reference = reference if isinstance(reference, list) and len(reference) == len(processes) else []
    medians, normalised = [], []
    for i, samples in enumerate(processes):
        values = [v for v in samples if isinstance(v, (int, float)) and math.isfinite(v)]
        if not values:
            continue
        median = float(np.median(values))
        medians.append(median)
        ref = reference[i] if i < len(reference) else None
        if isinstance(ref, (int, float)) and ref > 0 and normalised is not None:
            normalised.append(median / ref)
        else:
            normalised = None
    return medians, normalised if normalised else None


def min_p(n: int, m: int) -> float:
    """The smallest one-sided p-value a Mann-Whitney U test of n against m values can give (no ties)."""
    return 1.0 / math.comb(n + m, n) if n and m else 1.0


def latency_change(
    batch: str,
    old: CellRecord,
    new: CellRecord,
    old_t: Timings | None,
    new_t: Timings | None,
    threshold: float,
) -> LatencyChange:
    old_p50, new_p50 = _p50(old, batch), _p50(new, batch)
    change = LatencyChange(batch, old_p50, new_p50, _ratio(new_p50, old_p50), None, None, (0, 0), None, NA)
    if (old_p50 is None) != (new_p50 is None):
        change.verdict, change.notable = ONE_SIDED, True
        return change
    base = _medians(old_t, batch) if old_t else ([], None)
    cand = _medians(new_t, batch) if new_t else ([], None)
    if not base[0] or not cand[0]:
        if change.raw_ratio is not None:
            change.verdict = NO_TIMINGS
            change.notable = change.raw_ratio > 1 + threshold or change.raw_ratio < 1 / (1 + threshold)
        return change
    change.raw_ratio = _ratio(float(np.median(cand[0])), float(np.median(base[0])))
    # (label, baseline values, candidate values, ratio): raw per-process medians, and where both runs timed the
    # reference workload, the same divided by it. A regression must show in every view: a slowdown the machine's
    # speed explains (raw only) or that the reference's own noise makes up (normalised only) is not one.
    views = [("raw", base[0], cand[0], change.raw_ratio)]
    if base[1] and cand[1]:
        change.normalised_ratio = _ratio(float(np.median(cand[1])), float(np.median(base[1])))
        views.append(("normalised", base[1], cand[1], change.normalised_ratio))
    change.judged_on = " and ".join(label for label, *_ in views)
    change.processes = (len(base[0]), len(cand[0]))
    ratios = [r for *_, r in views]
    if any(r is None for r in ratios):
        change.judged_on = None
        return change
    slower = all(r > 1 + threshold for r in ratios)
    faster = all(r < 1 / (1 + threshold) for r in ratios)
    if min_p(*change.processes) > LATENCY_ALPHA:
        change.verdict, change.judged_on = TOO_FEW, None
        change.notable = slower or faster
        return change
    change.p_value = max(slower_p(b, c) for _, b, c, _ in views)  # the weakest of the views' evidence
    significant = change.p_value <= LATENCY_ALPHA
    if slower and significant:
        change.verdict = REGRESSION
    elif slower:
        change.verdict, change.notable = SLOWER_UNSURE, True
    elif significant and all(r > 1 for r in ratios):
        change.verdict, change.notable = SLOWER_SMALL, True
    elif max(slower_p(c, b) for _, b, c, _ in views) <= LATENCY_ALPHA:
        change.verdict, change.notable = FASTER, faster
    else:
        change.verdict = SAME
    return change


def resource_change(metric: str, before: float | None, after: float | None, threshold: float) -> ResourceChange:
    before, after = _num(before), _num(after)
    if before is None and after is None:
        return ResourceChange(metric, None, None, None, NA)
    change = _ratio(after, before)
    rel = None if change is None else change - 1
    row = ResourceChange(metric, before, after, rel, SAME)
    if rel is None:
        row.verdict, row.notable = NA, True
    elif rel > threshold + 1e-12:
        row.verdict = REGRESSION
    elif rel > 0:
        # an artifact's bytes are deterministic: any growth is a change; memory wobbles below its threshold
        row.verdict, row.notable = LARGER_SMALL, metric == "size"
    elif rel < 0:
        row.verdict, row.notable = SMALLER, metric == "size" or -rel > threshold
    return row


# -- settings -----------------------------------------------------------------------------------------------------


def _axis_entry(record: CellRecord, axis: str) -> Any:
    value = getattr(record, axis, None) if axis in AXES else None
    return record.extra.get(axis) if value is None else value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, v in enumerate(value):
            out |= _flatten(v, f"{prefix}[{i}]")
        return out
    return {prefix: value}


def settings_diffs(old: CellRecord, new: CellRecord) -> list[SettingsDiff]:
    """Axes whose settings hash differs, with the resolved parameters that differ; and the measurement profile."""
    out = []
    old_hash, new_hash = old.settings_hash or {}, new.settings_hash or {}
    for axis in [*AXES, *(a for a in old_hash if a not in AXES)]:
        if axis not in old_hash or axis not in new_hash or old_hash[axis] == new_hash[axis]:
            continue
        before, after = _flatten(_axis_entry(old, axis) or {}), _flatten(_axis_entry(new, axis) or {})
        params = {
            k: (before.get(k), after.get(k))
            for k in dict.fromkeys([*before, *after])
            if before.get(k) != after.get(k) and k != "label"
        }
        out.append(SettingsDiff(axis, params))
    old_profile = old.measurement.profile if old.measurement else None
    new_profile = new.measurement.profile if new.measurement else None
    if old_profile and new_profile and old_profile != new_profile:
        out.append(SettingsDiff("measurement", {"profile": (old_profile, new_profile)}))
    return out


def settings_text(diff: SettingsDiff) -> str:
    if not diff.params:
        return f"{diff.axis} (hash only)"
    params = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in diff.params.items())
    return f"{diff.axis}: {params}"


# -- small helpers ------------------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _ratio(after: float | None, before: float | None) -> float | None:
    if after is None or before is None or before <= 0:
        return None
    return after / before


def _p50(record: CellRecord, batch: str) -> float | None:
    stats = (record.latency_ms or {}).get(batch)
    return _num(stats.p50) if stats is not None else None


def _batch_order(batch: str) -> tuple[int, str]:
    try:
        return (int(batch), batch)
    except ValueError:
        return (1 << 62, batch)


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def amount(metric: str, value: float | None) -> str:
    """Bytes of an artifact ("size") or MB of memory, for people."""
    if value is None:
        return "-"
    if metric != "size":
        return f"{value:.0f} MB"
    return f"{value / 1e3:.1f} kB" if value < 1e6 else f"{value / 1e6:.2f} MB"


def format_p(p: float | None) -> str:
    if p is None:
        return "p=-"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"
