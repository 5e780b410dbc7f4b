"""Synthetic run directories for the report's tests: plausible records, as many as asked for, in no time."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path
from typing import Any

from bench.record import CellRecord

MODELS = [f"model{i}" for i in range(10)]
RECIPES = ["standard", "pgd_at", "trades", "fgsm_rs"]
COMPRESSIONS = ["none", "prune-0.5", "prune-0.7", "int8", "fp16", "kd", "lowrank-0.5", "prune-0.3", "int8-qat", "mix"]
RUNTIMES = ["eager", "onnxruntime", "torchscript", "openvino", "tensorrt"]
ATTACKS = ["none", "fgsm-0.03", "pgd-0.03", "pgd-0.1", "square-0.03"]


def fake_record(model: str, recipe: str, compression: str, runtime: str, attack: str, rng: random.Random) -> dict:
    labels = {"model": model, "recipe": recipe, "compression": compression, "runtime": runtime, "attack": attack}
    cell_id = "/".join(labels.values())
    base = {"cell_id": cell_id, "labels": labels, "model": {"name": model}, "recipe": {"name": recipe}}
    base |= {"compression": {"name": compression.split("-")[0]}, "runtime": {"name": runtime}}
    name, _, eps = attack.partition("-")
    base["attack"] = {"name": name} | ({"eps": float(eps)} if eps else {})
    roll = rng.random()
    if roll < 0.01:
        error = f"Traceback (most recent call last):\n  ...\nRuntimeError: export of {cell_id} failed"
        summary = f"export: RuntimeError: export of {cell_id} failed"
        return base | {"status": "failed", "error": error, "error_summary": summary}
    if roll < 0.03:
        return base | {"status": "skipped", "reason": f"runtime {runtime} is not installed"}
    clean = 0.9 + 0.05 * rng.random()
    robust = None if name == "none" else clean * (0.3 + 0.4 * rng.random())
    p50_1 = 0.05 + rng.random()
    within = rng.random() > 0.2
    epochs = 3
    record = base | {
        "status": "ok",
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "threat_model": None if robust is None else "white-box",
        "n_eval": 500,
        "latency_ms": {
            "1": {"p50": p50_1, "p90": p50_1 * 1.2, "p99": p50_1 * 1.5, "n": 200},
            "64": {"p50": p50_1 * 20, "p90": p50_1 * 25, "p99": p50_1 * 30, "n": 50},
        },
        "throughput_sps": 64_000 / (p50_1 * 20),
        "peak_memory_mb": 500 + 100 * rng.random(),
        "model_memory_mb": 5 + 10 * rng.random(),
        "model_size_bytes": int(1e5 + 5e6 * rng.random()),
        "params": int(1e5 + 1e6 * rng.random()),
        "macs": int(1e6 + 1e8 * rng.random()),
        "costs": {"train_s": 30.0, "compress_s": 0.0 if compression == "none" else 5 * rng.random(), "measure_s": 3.0},
        "checks": {"eps_ball": {"ok": True, "detail": "max |delta| <= eps"}},
        "budget": {"ratio": 0.99, "within_budget": within, "verdict": "kept" if within else "lost"},
        "training": {
            "seconds": 30.0,
            "epochs": epochs,
            "history": [{"epoch": e, "loss": 1.0 / e, "train_accuracy": 0.8 + 0.05 * e} for e in range(1, epochs + 1)],
        },
    }
    if compression != "none":
        verdict = rng.choice(["faster", "no clear change", "does not pay off"])
        baseline_cell = f"{model}/{recipe}/none/{runtime}/none"
        record["payoff"] = {"verdict": verdict, "baseline_cell": baseline_cell, "ratio": {"1": 0.8, "64": 0.9}}
    return record


def fake_run(run_dir: Path, n_cells: int, *, seed: int = 0, meta: dict[str, Any] | None = None) -> Path:
    """Write RUN_DIR/run.json and RUN_DIR/cells.jsonl with `n_cells` plausible records (1% failed, 2% skipped),
    read back through CellRecord so that they have the shape the harness writes."""
    rng = random.Random(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    axes = itertools.product(MODELS, RECIPES, COMPRESSIONS, RUNTIMES, ATTACKS)
    lines = []
    for combo in itertools.islice(axes, n_cells):
        record = CellRecord.from_json(fake_record(*combo, rng))
        lines.append(json.dumps(record.to_json()) + "\n")
    (run_dir / "cells.jsonl").write_text("".join(lines), encoding="utf-8")
    run_meta = {"name": run_dir.name, "status": "complete", "seed": seed, "environment": {"python": "3.11"}}
    (run_dir / "run.json").write_text(json.dumps(run_meta | (meta or {})), encoding="utf-8")
    return run_dir


# -- reading a rendered report back ---------------------------------------------------------------------------------


def report_figures(html: str) -> dict[str, dict[str, Any]]:
    """The report's Plotly figures, by chart id: the JSON the page draws when a chart scrolls into view."""
    found = re.findall(r'<script type="application/json" id="fig-(chart-[\w-]+)">(.*?)</script>', html, re.S)
    for chart_id, _ in found:
        assert f'<div id="{chart_id}" class="chart" data-fig="fig-{chart_id}">' in html, chart_id
    return {chart_id: json.loads(text) for chart_id, text in found}


def report_grid(html: str, name: str) -> dict[str, Any]:
    """One of the report's grids (cells, variants, breakeven, comparison): the JSON its script pages and sorts."""
    match = re.search(rf'<script type="application/json" id="grid-{name}">(.*?)</script>', html, re.S)
    assert match is not None, name
    return json.loads(match.group(1))


def plotly_source(html: str) -> str | None:
    """Where the report loads plotly.js from when it draws its first chart; None when it is inlined."""
    (tag,) = re.findall(r'<script type="text/x-plotly" id="plotly-lib"[^>]*>', html)
    found = re.search(r'data-src="([^"]+)"', tag)
    return None if found is None else found.group(1)
