"""Generated run directories for tests that need many cells without running them: run.json and cells.jsonl in the
shape `bench run` writes (records built as bench.record.CellRecord and written with its to_json)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from bench.record import CellRecord

# 10 models x 2 recipes x 10 compressions x 5 runtimes x 10 attacks = 10,000 cells
AXES: dict[str, list[str]] = {
    "model": [f"net{i}" for i in range(10)],
    "recipe": ["standard", "adversarial"],
    "compression": ["none", *(f"prune-0.{i}" for i in range(1, 6)), "int8", "fp16", "qat", "kd"],
    "runtime": ["eager", "torchscript", "onnxruntime", "ort-cuda", "int8-eager"],
    "attack": ["none", *(f"pgd-{e}" for e in (1, 2, 4, 8)), *(f"fgsm-{e}" for e in (1, 2, 4, 8)), "apgd-8"],
}


def _record(labels: dict[str, str], rng: random.Random) -> dict[str, Any]:
    cell_id = "/".join(labels[a] for a in ("model", "recipe", "compression", "runtime", "attack"))
    base = {
        "cell_id": cell_id,
        "labels": {"dataset": "synthetic", **labels},
        "model": {"name": labels["model"]},
        "recipe": {"name": labels["recipe"]},
        "compression": {"name": labels["compression"].split("-")[0]},
        "runtime": {"name": labels["runtime"]},
        "attack": {"name": labels["attack"].split("-")[0]},
        "dataset": {"name": "synthetic", "eval_size": 1000},
        "seed": 0,
        "device": "cpu",
    }
    draw = rng.random()
    if draw < 0.03:
        return base | {"status": "failed", "error": "RuntimeError: planted", "error_summary": "RuntimeError: planted"}
    if draw < 0.08:
        return base | {"status": "skipped", "reason": "runtime ort-cuda needs a CUDA device"}
    clean = rng.uniform(0.6, 0.99)
    robust = None if labels["attack"] == "none" else clean * rng.uniform(0.1, 0.9)
    p50 = rng.uniform(0.05, 30.0)
    latency = {
        str(batch): {"p50": p50 * batch**0.7, "p90": p50 * batch**0.7 * 1.2, "p99": p50 * batch**0.7 * 1.6, "n": 200}
        for batch in (1, 8)
    }
    return base | {
        "status": "ok",
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "n_eval": 1000,
        "latency_ms": latency,
        "throughput_sps": 1000.0 / p50,
        "peak_memory_mb": rng.uniform(300, 3000),
        "model_size_bytes": rng.randint(10_000, 50_000_000),
        "params": rng.randint(1_000, 12_000_000),
        "macs": rng.randint(1_000, 2_000_000_000),
        "costs": {"train_s": rng.uniform(1, 600), "compress_s": rng.uniform(0, 60), "export_s": rng.uniform(0, 5)},
        "eps": None if labels["attack"] == "none" else int(labels["attack"].split("-")[1]) / 255,
        "baseline": {"cell": "compression none, runtime eager", "clean_accuracy": clean, "robust_accuracy": robust},
    }


def write_fake_run(run_dir: Path, *, seed: int = 0, started_at: str = "2026-01-01T02:17:00+00:00") -> int:
    """Write a 10,000-cell run directory (3% failed, 5% skipped); returns the number of cells."""
    rng = random.Random(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines, counts = [], {"ok": 0, "skipped": 0, "failed": 0}
    for model in AXES["model"]:
        for recipe in AXES["recipe"]:
            for compression in AXES["compression"]:
                for runtime in AXES["runtime"]:
                    for attack in AXES["attack"]:
                        labels = {
                            "model": model,
                            "recipe": recipe,
                            "compression": compression,
                            "runtime": runtime,
                            "attack": attack,
                        }
                        record = CellRecord.from_json(_record(labels, rng))
                        counts[record.status] += 1
                        lines.append(json.dumps(record.to_json()))
    (run_dir / "cells.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = {
        "schema_version": 2,
        "name": "fake-10k",
        "suite_file": "suites/fake-10k.yaml",
        "suite_hash": f"fake{seed:04d}",
        "seed": 0,
        "device": "cpu",
        "shard": None,
        "environment": {
            "bench": "0.1.0",
            "python": "3.11",
            "hostname": "fake",
            "cpu": "fake CPU",
            "torch": "2.0",
            "onnxruntime": "1.0",
            "gpu": None,
            "git_commit": f"{seed:040x}",
            "git_dirty": False,
        },
        "n_cells": len(lines),
        "started_at": started_at,
        "resumed_at": [],
        "finished_at": started_at,
        "status": "complete",
        "counts": counts,
        "invariants": {"checked": 0, "violations": []},
        "gates": {"checked": 0, "pass": 0, "fail": 0, "inconclusive": 0},
    }
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return len(lines)
