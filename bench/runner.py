"""Run a suite: every cell through the cached stages, one record per cell appended to cells.jsonl.

The stages come from bench.pipeline, the record is assembled by bench.assemble (a bench.record.CellRecord), and
the FP32 parity check is bench.parity's (re-exported here: `from bench.runner import check_parity` still works).

A cell that raises is recorded as failed with its traceback and the run goes on; a skipped cell is recorded with
its reason. `resume=True` continues a run directory: cells already recorded are not run again and cached stages
are not recomputed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench import jsonl
from bench.assemble import CellStages, assemble_group, failed_record, identity_record, skipped_record
from bench.cache import StageCache
from bench.env import environment
from bench.errors import BenchInputError
from bench.evidence import (
    CORRECTNESS_FILE,
    TIMINGS_FILE,
    Correctness,
    Timings,
    append_correctness,
    append_timings,
    read_timings,
)
from bench.gates import gate_counts
from bench.invariants import run_invariants
from bench.matrix import Cell, build_cells, select_shard
from bench.models import model_files
from bench.parity import check_parity
from bench.pipeline import Pipeline, is_baseline
from bench.preflight import check_suite
from bench.record import SCHEMA_VERSION, CellRecord, read_records
from bench.rundir import RUN_FILE, check_resumable, provenance
from bench.shards import groups_of
from bench.suite import Suite
from bench.timelimit import time_limit

log = logging.getLogger(__name__)

CELLS_FILE, STAGES_FILE, ERRORS_FILE = "cells.jsonl", "stages.jsonl", "errors.log"


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise BenchInputError("device 'cuda' requested but no CUDA device is available", field="device")
    return requested


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def default_run_dir(suite: Suite, root: Path = Path("results")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{suite.name}-{stamp}"


def run_stages(cell: Cell, pipeline: Pipeline) -> CellStages:
    """Run (or take from the cache) every stage of one cell, its measurement included (tests and tools use this;
    `run_suite` measures a group's artifacts together instead)."""
    prepared = prepare_stages(cell, pipeline)
    return dataclasses.replace(prepared, measured=pipeline.measure(cell, prepared.data, prepared.exported))


def prepare_stages(cell: Cell, pipeline: Pipeline) -> CellStages:
    """The stages of one cell but its measurement, in the order that keys and logs them, then the FP32 parity
    check: a runtime that computes another model's outputs fails the cell. `measured` is left None."""
    stages = pipeline.chain(cell)
    data, trained, compressed = stages["data"], stages["train"], stages["compress"]
    exported, evaluated = stages["export"], stages["evaluate"]
    baseline = pipeline.baseline(cell, data, trained) if not is_baseline(cell) else evaluated
    if not compressed.meta.get("lowering"):
        check_parity(cell, evaluated.meta["agreement"])
    return CellStages(data, trained, compressed, exported, None, evaluated, baseline)  # type: ignore[arg-type]


def pin_threads(suite: Suite) -> int:
    """Pin torch's threads to the suite's `measurement.threads` (default: every core), for training, evaluation and
    measurement alike; returns the count, which the records and the measure stage's key hold."""
    threads = suite.measurement.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def run_suite(
    suite: Suite,
    run_dir: Path,
    *,
    cache_dir: Path,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    device: str | None = None,
    progress: bool = True,
    remeasure: bool = False,
    cell_timeout: float | None = None,
    executor: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run every (missing) cell of `suite` into `run_dir`; returns run.json's content. `executor` "ray" runs the
    stages as tasks on a Ray cluster (`ray_address`; None starts a local instance), "local" in this process."""
    device = resolve_device(device or suite.device)
    threads = pin_threads(suite)
    cells_path = run_dir / CELLS_FILE
    if (cells_path.exists() or (run_dir / RUN_FILE).exists()) and not resume:
        raise BenchInputError(
            f"{run_dir} already holds a run; pass --resume to finish it or choose another --out", field="--out"
        )
    env = environment()
    all_cells = build_cells(suite, device)
    cells = select_shard(all_cells, shard)
    pipeline = Pipeline(suite, StageCache(cache_dir), run_dir / STAGES_FILE, device, threads, env, remeasure)
    # Every input error of the whole suite (every shard's: data files and splits, models and checkpoints on the
    # data's shape, eps) is found here, before anything is written (bench.preflight); the run reuses its data.
    splits = check_suite(suite, all_cells)
    needed = {cell.dataset.label for cell in cells}
    pipeline.use_datasets({label: data for label, data in splits.items() if label in needed})

    # A resume continues only the experiment the directory holds (bench.rundir); refused before anything is written.
    current = provenance(suite.resolved(), model_files(suite))
    previous = check_resumable(run_dir, current, list(shard) if shard else None) if resume and run_dir.exists() else {}

    if executor == "ray":  # Ray up (or joined) and the suite's resources checked before anything is written
        from bench.ray_executor import connect, require_ray

        require_ray()
        connect(ray_address, suite, threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    jsonl.repair(cells_path)  # a run killed mid-write leaves a torn last line
    for name in (STAGES_FILE, TIMINGS_FILE, CORRECTNESS_FILE):
        jsonl.repair(run_dir / name)
    done = {r.cell_id for r in read_records(cells_path)}
    run_meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": suite.name,
        "suite_file": suite.file,
        "suite": suite.resolved(),
        "suite_hash": suite_hash(suite),
        "provenance": current,
        "seed": suite.seed,
        "device": device,
        "shard": list(shard) if shard else None,
        # what the command line changed beyond the suite (gates given with --gate are in suite.gate)
        "options": {"remeasure": remeasure, "cell_timeout_s": cell_timeout, "executor": executor},
        "cache_dir": str(cache_dir.resolve()),
        "environment": env,
        "n_cells": len(cells),
        "started_at": previous.get("started_at", _now()),
        "resumed_at": [*previous.get("resumed_at", []), _now()] if resume and previous else [],
        "finished_at": None,
        "status": "running",
    }
    jsonl.write_json_atomic(run_dir / RUN_FILE, run_meta)

    todo = [c for c in cells if c.cell_id not in done]
    evidence = EvidenceWriter(run_dir)
    log.info("%d cells (%d already recorded), run directory %s", len(cells), len(cells) - len(todo), run_dir)
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(todo),
        unit="cell",
        disable=not progress,
        dynamic_ncols=True,
        desc=suite.name,
    )
    timeout = cell_timeout if cell_timeout is not None else suite.limits.cell_timeout_s
    try:
        if executor == "ray":  # stages as Ray tasks; this process still writes every record (bench.ray_executor)
            from bench.ray_executor import ray_records

            produced = ray_records(todo, pipeline, evidence, timeout, bar, ray_address)
        else:
            groups = groups_of(todo)
            produced = (run_group(g, pipeline, suite, device, evidence, timeout, bar) for g in groups)
        for group_records in produced:  # a group's records together: its evidence made durable first, then them
            evidence.sync()
            jsonl.append_many(cells_path, [record.to_json() for record in group_records])
            for record in group_records:
                if record.status == "failed":  # one line on the console; the traceback in the record and the log
                    log.warning("cell %s failed: %s", record.cell_id, record.cause)
                    with open(run_dir / ERRORS_FILE, "a", encoding="utf-8") as log_file:
                        log_file.write(f"== {record.cell_id} ({_now()})\n{record.error}\n\n")
                bar.update(1)
    except KeyboardInterrupt:
        run_meta.update(status="interrupted", interrupted_at=_now())
        jsonl.write_json_atomic(run_dir / RUN_FILE, run_meta)
        raise
    finally:
        bar.close()
    records = read_records(cells_path)
    counts = {s: sum(r.status == s for r in records) for s in ("ok", "skipped", "failed")}
    invariants = run_invariants([r.to_json() for r in records])  # bench.invariants reads JSON records
    run_meta.update(status="complete", finished_at=_now(), counts=counts, invariants=invariants)
    run_meta["gates"] = gate_counts(records)  # verdicts of the suite gates over all records (bench.gates)
    jsonl.write_json_atomic(run_dir / RUN_FILE, run_meta)
    return run_meta


def run_group(
    group: list[Cell],
    pipeline: Pipeline,
    suite: Suite,
    device: str,
    evidence: EvidenceWriter,
    timeout: float | None,
    bar: Any,
) -> list[CellRecord]:
    """The records of one group of cells, in suite order: each cell's stages but measurement (under its time
    limit), then the measurement of the group's artifacts together, then the records."""
    records: dict[str, CellRecord] = {}
    prepared: dict[str, tuple[Cell, CellRecord, CellStages]] = {}
    seconds: dict[str, float] = {}
    for cell in group:
        bar.set_postfix_str(cell.cell_id, refresh=True)
        identity = identity_record(cell, suite.seed, device)
        start = time.perf_counter()
        if cell.skip_reason:
            records[cell.cell_id] = skipped_record(identity, cell.skip_reason)
        else:
            pipeline.current_cell = cell.cell_id
            try:
                with time_limit(timeout):
                    prepared[cell.cell_id] = (cell, identity, prepare_stages(cell, pipeline))
            except Exception as exc:  # a failing cell is recorded, and the run goes on
                records[cell.cell_id] = failed_record(identity, exc)
        seconds[cell.cell_id] = time.perf_counter() - start
    bar.set_postfix_str(f"measuring {len({s.exported.key for *_, s in prepared.values()})} artifacts", refresh=True)
    items = [(cell, stages.data, stages.exported) for cell, _, stages in prepared.values()]
    measured = pipeline.measure_many(items, timeout)
    done = [(*entry, result) for entry, result in zip(prepared.values(), measured, strict=True)]
    records.update(assemble_group(done, suite, evidence, seconds))
    out = []
    for cell in group:
        record = records[cell.cell_id]
        record.wall_s = seconds[cell.cell_id]
        out.append(record)
    return out


def suite_hash(suite: Suite) -> str:
    """A hash of the resolved suite without its file path: shards and re-runs of one suite share it."""
    # gates judge and resources place cells: neither changes what a cell measures
    resolved = {k: v for k, v in suite.resolved().items() if k not in ("file", "gate", "resources")}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


class EvidenceWriter:
    """Appends what `bench compare` needs beyond the records (bench.evidence): each artifact's raw timings once
    per run, and each evaluated cell's per-sample correctness."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._timed = set(read_timings(run_dir))
        self._eval_sha: dict[str, str] = {}
        self.measured_seconds_counted: set[str] = set()

    def sync(self) -> None:
        """fsync the evidence files (appended without sync, a group's worth at a time)."""
        for name in (TIMINGS_FILE, CORRECTNESS_FILE):
            jsonl.fsync(self.run_dir / name)

    def write(self, record: CellRecord, stages: CellStages) -> None:
        import torch

        measured, evaluated = stages.measured, stages.evaluated
        if measured.key not in self._timed:
            samples = json.loads((measured.path / "samples.json").read_text())
            processes = {b: v if v and isinstance(v[0], list) else [v] for b, v in samples.items()}
            reference = measured.meta["result"].get("reference_ms") or []
            append_timings(self.run_dir, Timings(measured.key, processes, reference, fresh=not measured.cache_hit))
            self._timed.add(measured.key)
        per_sample = torch.load(evaluated.path / "per_sample.pt", weights_only=True)
        data_key = stages.data.key
        if data_key not in self._eval_sha:  # of the tensors, not of the file: equal samples hash equal anywhere
            split = torch.load(stages.data.path / "eval.pt", weights_only=True)
            digest = hashlib.sha256()
            for tensor in (split["x"], split["y"]):
                digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
                digest.update(tensor.contiguous().numpy().tobytes())
            self._eval_sha[data_key] = digest.hexdigest()
        robust = per_sample["robust_correct"]
        append_correctness(
            self.run_dir,
            Correctness(
                str(record.cell_id),
                self._eval_sha[data_key],
                per_sample["clean_correct"].numpy(),
                None if robust is None else robust.numpy(),
            ),
        )
