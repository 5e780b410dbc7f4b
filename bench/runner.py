"""Run a suite: every cell through the cached stages, one record per cell appended to cells.jsonl.

A cell that raises is recorded as failed with its traceback and the run goes on; a skipped cell is recorded with
its reason. `resume=True` continues a run directory: cells already recorded are not run again and cached stages
are not recomputed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench import jsonl
from bench.cache import StageCache
from bench.checks import budget_verdict, compression_checks
from bench.env import environment
from bench.errors import BenchInputError
from bench.invariants import run_invariants
from bench.matrix import Cell, build_cells, select_shard
from bench.pipeline import Pipeline, is_baseline
from bench.suite import AXES, Suite

log = logging.getLogger(__name__)

RUN_FILE, CELLS_FILE, STAGES_FILE = "run.json", "cells.jsonl", "stages.jsonl"


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


def cell_record(cell: Cell, pipeline: Pipeline) -> dict[str, Any]:
    """Run the stages of one cell and assemble its record (DESIGN.md section 5)."""
    data = pipeline.data(cell.dataset)
    trained = pipeline.train(cell, data)
    compressed = pipeline.compress(cell, data, trained)
    exported = pipeline.export(cell, data, compressed)
    measured = pipeline.measure(cell, data, exported)
    evaluated = pipeline.evaluate(cell, data, compressed, exported)
    baseline = pipeline.baseline(cell, data, trained) if not is_baseline(cell) else evaluated
    if not compressed.meta.get("lowering"):
        check_parity(cell, evaluated.meta["agreement"])

    m = measured.meta["result"]
    ev = evaluated.meta
    export_meta = exported.meta["exported"]["meta"]
    quantize_s = export_meta.get("quantize_s", 0.0)
    latency = {
        b: {k: v for k, v in stats.items() if k not in ("warmup_s", "timer")} for b, stats in m["latency_ms"].items()
    }
    record = {
        "status": "ok",
        "clean_accuracy": ev["clean_accuracy"],
        "robust_accuracy": ev["robust_accuracy"],
        "threat_model": ev["threat_model"],
        "surrogate": ev["surrogate"],
        "n_eval": ev["n_eval"],
        "latency_ms": latency,
        "throughput_sps": m["throughput_sps"],
        "peak_memory_mb": m["peak_rss_mb"],
        "model_size_bytes": exported.meta["size_bytes"],
        "params": compressed.meta["params"],
        "macs": compressed.meta["macs"],
        "costs": {
            "train_s": trained.meta["cost"]["seconds"],
            # quantization (calibration + conversion) happens at export but is the compression's cost
            "compress_s": compressed.meta["compress_s"] + quantize_s,
            "export_s": exported.meta["seconds"] - quantize_s,
            "measure_s": measured.meta["seconds"],
            "attack_s": ev["attack_s"],
            "eval_s": ev["eval_s"],
        },
        "attack_success_rate": ev.get("attack_success_rate"),
        "eps": ev.get("eps"),
        "norm": ev.get("norm"),
        "components": ev.get("components"),  # worst_case: each member's robust accuracy and threat model
        "queries": ev.get("queries"),  # query attacks: queries per attacked sample
        "agreement": ev["agreement"],
        "checks": ev["checks"]
        | compression_checks(compressed.meta["steps"], compressed.meta.get("lowering"), export_meta),
        "baseline": {
            "cell": "compression none, runtime eager",
            "clean_accuracy": baseline.meta["clean_accuracy"],
            "robust_accuracy": baseline.meta["robust_accuracy"],
        },
        "measurement": {
            "profile": measured.meta["profile"],
            "threads": measured.meta["threads"],
            "load_s": m["load_s"],
            "first_call_ms": m["first_call_ms"],
            "baseline_rss_mb": m["baseline_rss_mb"],
            "inference_rss_delta_mb": m["inference_rss_delta_mb"],
            "peak_gpu_mb": m.get("peak_gpu_mb"),
        },
        "training": trained.meta["cost"] | {"peak_memory_mb": trained.meta["peak_memory_mb"]},
        "compression_steps": compressed.meta["steps"],
        "lowering": export_meta if compressed.meta.get("lowering") else None,
        "artifact": {
            "format": exported.meta["exported"]["format"],
            "files": exported.meta["files"],
            "sha256": exported.meta["sha256"],
            "path": str(exported.path / exported.meta["exported"]["main_file"]),
        },
        "stages": {s.kind: s.key for s in (data, trained, compressed, exported, measured, evaluated)},
    }
    record["budget"] = budget_verdict(record, record["baseline"], pipeline.suite.evaluation.budget)
    return record


PARITY_MAX_ABS_DIFF = 1e-3  # logits of an FP32 runtime against the eager model it was exported from
PARITY_MIN_AGREEMENT = 0.99


def check_parity(cell: Cell, agreement: dict[str, float]) -> None:
    """An FP32 runtime must compute what the eager model computes; otherwise its numbers describe another model."""
    diff, top1 = agreement["max_abs_logit_diff"], agreement["top1_agreement"]
    if diff > PARITY_MAX_ABS_DIFF or top1 < PARITY_MIN_AGREEMENT:
        raise RuntimeError(
            f"{cell.runtime.label} disagrees with the FP32 eager model: max |logit difference| {diff:.2e} "
            f"(tolerance {PARITY_MAX_ABS_DIFF:g}), top-1 agreement {top1:.2%} (at least {PARITY_MIN_AGREEMENT:.0%})"
        )


def _base_record(cell: Cell, suite: Suite, device: str) -> dict[str, Any]:
    record: dict[str, Any] = {"cell_id": cell.cell_id}
    record.update({axis: cell.choice(axis).record() for axis in AXES})
    record["labels"] = {axis: cell.choice(axis).label for axis in ("dataset", *AXES)}
    record.update(status=None, reason=None, error=None, dataset=cell.dataset.record(), seed=suite.seed, device=device)
    return record


def run_suite(
    suite: Suite,
    run_dir: Path,
    *,
    cache_dir: Path,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every (missing) cell of `suite` into `run_dir`; returns run.json's content."""
    device = resolve_device(device or suite.device)
    cells_path = run_dir / CELLS_FILE
    if cells_path.exists() and not resume:
        raise BenchInputError(
            f"{run_dir} already holds a run; pass --resume to finish it or choose another --out", field="--out"
        )
    threads = suite.measurement.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)  # pinned for training, evaluation and measurement alike; recorded below
    env = environment()
    cells = select_shard(build_cells(suite, device), shard)
    pipeline = Pipeline(suite, StageCache(cache_dir), run_dir / STAGES_FILE, device, threads, env)
    # Data first: missing dataset files are the user's mistake (exit 2), found before anything is written.
    try:
        pipeline.load_datasets([cell.dataset for cell in cells])
    except BenchInputError as exc:
        raise BenchInputError(exc.detail, file=exc.file or suite.file, field=exc.field or "dataset") from None

    run_dir.mkdir(parents=True, exist_ok=True)
    jsonl.repair(cells_path)  # a run killed mid-write leaves a torn last line
    jsonl.repair(run_dir / STAGES_FILE)
    done = {r["cell_id"] for r in jsonl.read(cells_path)}
    previous = jsonl_read_json(run_dir / RUN_FILE) if resume else {}
    run_meta: dict[str, Any] = {
        "name": suite.name,
        "suite_file": suite.file,
        "suite": suite.resolved(),
        "seed": suite.seed,
        "device": device,
        "shard": list(shard) if shard else None,
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
    log.info("%d cells (%d already recorded), run directory %s", len(cells), len(cells) - len(todo), run_dir)
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(todo),
        unit="cell",
        disable=not progress,
        dynamic_ncols=True,
        desc=suite.name,
    )
    try:
        for cell in todo:
            bar.set_postfix_str(cell.cell_id, refresh=True)
            record = _base_record(cell, suite, device)
            start = time.perf_counter()
            if cell.skip_reason:
                record.update(status="skipped", reason=cell.skip_reason)
            else:
                pipeline.current_cell = cell.cell_id
                try:
                    record.update(cell_record(cell, pipeline))
                except Exception as exc:  # a failing cell is recorded, and the run goes on
                    log.warning("cell %s failed: %s", cell.cell_id, exc)
                    record.update(status="failed", error="".join(traceback.format_exception(exc)).strip())
            record["wall_s"] = time.perf_counter() - start
            jsonl.append(cells_path, record)
            bar.update(1)
    except KeyboardInterrupt:
        run_meta.update(status="interrupted", interrupted_at=_now())
        jsonl.write_json_atomic(run_dir / RUN_FILE, run_meta)
        raise
    finally:
        bar.close()
    records = jsonl.read(cells_path)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    run_meta.update(status="complete", finished_at=_now(), counts=counts, invariants=run_invariants(records))
    jsonl.write_json_atomic(run_dir / RUN_FILE, run_meta)
    return run_meta


def jsonl_read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
