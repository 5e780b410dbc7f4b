"""The smoke suite end to end: every axis member runs, records carry measured numbers, stages are shared and
cached, a warm re-run is all cache hits with the same accuracies, and the report is written."""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import pytest

import bench
from bench import jsonl
from tests.conftest import run_cli
from tests.report_fixtures import report_figures

REQUIRED = (
    "cell_id",
    "model",
    "recipe",
    "compression",
    "runtime",
    "attack",
    "status",
    "clean_accuracy",
    "robust_accuracy",
    "threat_model",
    "n_eval",
    "latency_ms",
    "throughput_sps",
    "peak_memory_mb",
    "model_size_bytes",
    "params",
    "macs",
    "costs",
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    from bench.cli import main

    code = main(
        ["run", "suites/smoke.yaml", "--out", str(root / "run"), "--cache", str(root / "cache"), "--no-progress"]
    )
    return code, root


def test_smoke_suite_all_cells_ok(smoke_run):
    code, root = smoke_run
    assert code == 0
    records = jsonl.read(root / "run" / "cells.jsonl")
    assert records and all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    names = {axis: {r[axis]["name"] for r in records} for axis in ("model", "compression", "runtime", "attack")}
    assert names["compression"] == {"none", "prune", "int8"}
    assert names["runtime"] == {"eager", "onnxruntime"}
    assert names["attack"] == {"none", "fgsm", "pgd"}


def test_records_carry_measured_metrics(smoke_run):
    _, root = smoke_run
    for r in jsonl.read(root / "run" / "cells.jsonl"):
        for key in REQUIRED:
            assert key in r, key
        assert 0.5 < r["clean_accuracy"] <= 1.0
        assert r["n_eval"] == 200
        for batch in ("1", "32"):
            stats = r["latency_ms"][batch]
            assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"]
            assert stats["n"] >= 5 and stats["std"] >= 0
            # a tail percentile from fewer samples than LoadGen's bound is marked, never silently reported
            assert ("p99" in stats["insufficient"]) == (stats["n"] < 662)
            assert ("p90" in stats["insufficient"]) == (stats["n"] < 64)
        assert r["throughput_sps"] > 0 and r["peak_memory_mb"] > 10
        files = r["artifact"]["files"]
        on_disk = sum((Path(r["artifact"]["path"]).parent / name).stat().st_size for name in files)
        assert r["model_size_bytes"] == on_disk > 0
        assert r["params"] > 0 and r["macs"] > 0
        assert all(v >= 0 for v in r["costs"].values())
        assert r["training"]["epochs"] == 8 and r["training"]["peak_memory_mb"] > 10
        if r["attack"]["name"] == "none":
            assert r["robust_accuracy"] is None and r["threat_model"] is None
        else:
            assert 0 <= r["robust_accuracy"] < r["clean_accuracy"]  # eps 0.1 breaks some samples of these models
            assert all(check["ok"] for check in r["checks"].values()), r["checks"]
            expected = (
                "white-box" if r["runtime"]["name"] == "eager" and r["compression"]["name"] != "int8" else ("transfer")
            )
            assert r["threat_model"] == expected


def test_compressions_really_happened(smoke_run):
    _, root = smoke_run
    records = {r["cell_id"]: r for r in jsonl.read(root / "run" / "cells.jsonl")}
    base = records["simple_cnn/standard/none/eager/none"]
    pruned = records["simple_cnn/standard/prune-0.5/eager/none"]
    assert pruned["params"] < base["params"] / 2.5  # half the channels: about a quarter of the weights
    assert pruned["macs"] < base["macs"] / 2.5
    int8_ort = records["simple_cnn/standard/int8/onnxruntime/none"]
    assert int8_ort["lowering"]["quantized_ops"] > 0
    assert int8_ort["model_size_bytes"] < records["simple_cnn/standard/none/onnxruntime/none"]["model_size_bytes"]


def test_stages_are_shared(smoke_run):
    _, root = smoke_run
    stages = jsonl.read(root / "run" / "stages.jsonl")
    executed = collections.Counter(s["kind"] for s in stages if not s["cache_hit"])
    # 2 models trained once each; 3 compressions each (minus none? no: none is a stage too);
    # exports: one per (model, compression, runtime); measurements: one per export
    assert executed["train"] == 2
    assert executed["compress"] == 6
    records = jsonl.read(root / "run" / "cells.jsonl")
    artifacts = {(r["model"]["name"], r["labels"]["compression"], r["labels"]["runtime"]) for r in records}
    assert executed["export"] == len(artifacts)
    assert executed["measure"] == len(artifacts)
    assert executed["evaluate"] == len(records)


def test_warm_rerun_is_cache_hits_with_same_accuracies(smoke_run, tmp_path):
    _, root = smoke_run
    from bench.cli import main

    code = main(
        ["run", "suites/smoke.yaml", "--out", str(tmp_path / "again"), "--cache", str(root / "cache"), "--no-progress"]
    )
    assert code == 0
    stages = jsonl.read(tmp_path / "again" / "stages.jsonl")
    assert stages and all(s["cache_hit"] for s in stages if s["kind"] != "data")
    first = {r["cell_id"]: r for r in jsonl.read(root / "run" / "cells.jsonl")}
    for r in jsonl.read(tmp_path / "again" / "cells.jsonl"):
        assert r["clean_accuracy"] == first[r["cell_id"]]["clean_accuracy"]
        assert r["robust_accuracy"] == first[r["cell_id"]]["robust_accuracy"]


def test_report_written(smoke_run):
    _, root = smoke_run
    html = (root / "run" / "report.html").read_text()
    assert "simple_cnn/standard/prune-0.5/onnxruntime/pgd-0.1" in html
    assert len(report_figures(html)) >= 2  # the figures' data, drawn as they scroll into view


def test_run_json_has_environment(smoke_run):
    _, root = smoke_run
    meta = json.loads((root / "run" / "run.json").read_text())
    assert meta["status"] == "complete"
    assert meta["environment"]["torch"] and meta["environment"]["cpu_count"] >= 1
    assert meta["counts"]["ok"] == meta["n_cells"]


def test_load_run_lets_a_user_recheck_numbers(smoke_run):
    _, root = smoke_run
    import numpy as np
    import onnxruntime as ort
    import torch

    run = bench.load_run(root / "run")
    assert len(run.cells) == run.meta["n_cells"]
    assert set(REQUIRED) <= set(run.cells.columns)
    for cell_id in (
        "simple_cnn/standard/none/eager/none",
        "simple_cnn/standard/prune-0.5/eager/none",
        "simple_cnn/standard/int8/eager/none",
    ):
        x, y = run.eval_data(cell_id)
        model = run.model(cell_id)
        assert not model.training
        with torch.no_grad():
            acc = int((model(x).argmax(1) == y).sum()) / len(y)
        assert math.isclose(acc, run.record(cell_id).clean_accuracy, abs_tol=1e-9)
    cell_id = "simple_cnn/standard/int8/onnxruntime/none"
    session = ort.InferenceSession(str(run.artifact(cell_id)), providers=["CPUExecutionProvider"])
    x, y = run.eval_data(cell_id)
    logits = session.run(None, {session.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
    acc = int((logits.argmax(1) == y.numpy()).sum()) / len(y)
    assert math.isclose(acc, run.record(cell_id).clean_accuracy, abs_tol=1e-9)


def test_summary_printed(tmp_path, capsys):
    from tests.conftest import TINY_SUITE, write_suite

    path = write_suite(tmp_path / "t.yaml", TINY_SUITE)
    code, out, _ = run_cli(
        ["run", path, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-progress"], capsys
    )
    assert code == 0
    assert "mlp/standard/none/eager/fgsm-0.1" in out
    assert f"report: {tmp_path / 'run' / 'report.html'}" in out
