"""Runtimes and measurement: integrity of artifacts, parity with eager, thread settings, memory isolation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench import jsonl
from bench.matrix import build_cells
from bench.runner import check_parity
from bench.suite import load_suite
from tests.helpers import TINY_SUITE, run_cli, write_suite


def _run(tmp_path, capsys, data, name="run", cache="cache"):
    suite = write_suite(tmp_path / f"{name}.yaml", data)
    code, _out, _err = run_cli(
        ["run", suite, "--out", tmp_path / name, "--cache", tmp_path / cache, "--no-progress"], capsys
    )
    return code, {r["cell_id"]: r for r in jsonl.read(tmp_path / name / "cells.jsonl")}


ORT_SUITE = copy.deepcopy(TINY_SUITE) | {
    "runtimes": [{"name": "onnxruntime", "exporter": "torchscript"}],
    "attacks": ["none"],
}


@pytest.mark.parametrize("damage", ["altered", "truncated"])
def test_tampered_artifact_fails_its_cell(tmp_path, capsys, damage):
    code, records = _run(tmp_path, capsys, ORT_SUITE)
    assert code == 0
    (record,) = records.values()
    artifact = Path(record["artifact"]["path"])
    data = artifact.read_bytes()
    artifact.write_bytes(data[:-10] + b"0123456789" if damage == "altered" else data[: len(data) // 2])
    code, records = _run(tmp_path, capsys, ORT_SUITE, name="again")
    assert code == 1
    (record,) = records.values()
    assert record["status"] == "failed"
    assert "altered or truncated since export" in record["error"]


def test_session_settings_and_threads_are_pinned_and_recorded(tmp_path, capsys):
    data = copy.deepcopy(ORT_SUITE)
    data["runtimes"] = [{"name": "onnxruntime", "exporter": "torchscript", "graph_optimization": "basic"}]
    data["measurement"] = dict(data["measurement"], threads=1)
    code, records = _run(tmp_path, capsys, data)
    assert code == 0
    (record,) = records.values()
    assert record["measurement"]["threads"] == 1
    stages = {s["kind"]: s for s in jsonl.read(tmp_path / "run" / "stages.jsonl")}
    meta = json.loads((tmp_path / "cache" / "measure" / stages["measure"]["key"] / "meta.json").read_text())
    assert meta["result"]["session_options"]["intra_op_threads"] == 1
    assert meta["result"]["session_options"]["graph_optimization"] == "basic"
    # another thread count is another measurement, not a cache hit
    data["measurement"]["threads"] = 2
    code, again = _run(tmp_path, capsys, data, name="two")
    assert code == 0
    measure = [s for s in jsonl.read(tmp_path / "two" / "stages.jsonl") if s["kind"] == "measure"]
    assert not measure[0]["cache_hit"]
    assert next(iter(again.values()))["measurement"]["threads"] == 2


def test_memory_is_measured_per_artifact_in_a_fresh_process(tmp_path, capsys):
    data = copy.deepcopy(TINY_SUITE) | {
        "dataset": {"name": "synthetic", "n_samples": 200, "eval_size": 50, "calibration_size": 20},
        # the large model first: the small one must not inherit its peak
        "models": [{"name": "resnet18", "width": 64}, {"name": "mlp", "hidden": [16]}],
        "recipes": ["none"],
        "attacks": ["none"],
    }
    code, records = _run(tmp_path, capsys, data)
    assert code == 0
    large = records["resnet18/none/none/eager/none"]
    small = records["mlp/none/none/eager/none"]
    assert large["model_size_bytes"] > 40e6 > 1e6 > small["model_size_bytes"]
    assert small["peak_memory_mb"] < large["peak_memory_mb"] - 30


def test_parity_failure_names_the_figures():
    suite_cells = build_cells(load_suite("suites/smoke.yaml"))
    cell = next(c for c in suite_cells if c.runtime.name == "onnxruntime")
    check_parity(cell, {"max_abs_logit_diff": 1e-6, "top1_agreement": 1.0})
    with pytest.raises(RuntimeError, match=r"max \|logit difference\| 5.00e-02 .* top-1 agreement 97.00%"):
        check_parity(cell, {"max_abs_logit_diff": 0.05, "top1_agreement": 0.97})


def test_missing_provider_is_a_skip_with_reason(tmp_path):
    data = copy.deepcopy(TINY_SUITE) | {"runtimes": [{"name": "onnxruntime", "providers": ["tensorrt"]}]}
    cells = build_cells(load_suite(write_suite(tmp_path / "s.yaml", data)))
    assert all("no TensorrtExecutionProvider" in c.skip_reason for c in cells)


@pytest.mark.slow
def test_torchscript_and_torch_compile_match_eager(tmp_path, capsys):
    data = copy.deepcopy(TINY_SUITE) | {"runtimes": ["eager", "torchscript", "torch_compile"], "attacks": ["none"]}
    code, records = _run(tmp_path, capsys, data)
    assert code == 0, [r.get("error") for r in records.values()]
    accs = {r["runtime"]["name"]: r["clean_accuracy"] for r in records.values()}
    assert accs["torchscript"] == accs["eager"] == accs["torch_compile"]
    assert all(r["agreement"]["max_abs_logit_diff"] < 1e-4 for r in records.values())


@pytest.mark.gpu
def test_cuda_path_times_with_events_and_records_gpu_memory(tmp_path, capsys):
    data = copy.deepcopy(TINY_SUITE) | {"device": "cuda", "compressions": ["none", "fp16"], "attacks": ["none"]}
    code, records = _run(tmp_path, capsys, data)
    assert code == 0, [r.get("error") for r in records.values()]
    for record in records.values():
        assert record["device"] == "cuda"
        assert record["measurement"]["peak_gpu_mb"] > 0
    stages = [s for s in jsonl.read(tmp_path / "run" / "stages.jsonl") if s["kind"] == "measure"]
    meta = json.loads((tmp_path / "cache" / "measure" / stages[0]["key"] / "meta.json").read_text())
    assert meta["result"]["latency_ms"]["1"]["timer"] == "cuda_events"
    env = json.loads((tmp_path / "run" / "run.json").read_text())["environment"]
    assert env["gpu"] and env["cuda"]


def test_crosscheck_remeasures_each_artifact_with_a_bare_loop(tmp_path, capsys):
    data = copy.deepcopy(TINY_SUITE) | {"runtimes": ["eager", {"name": "onnxruntime", "exporter": "torchscript"}]}
    code, _ = _run(tmp_path, capsys, data)
    assert code == 0
    code, out, _ = run_cli(["crosscheck", tmp_path / "run", "--seconds", "0.2"], capsys)
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("mlp/")]
    assert {row.split()[0] for row in rows} == {"mlp/standard/none/eager", "mlp/standard/none/onnxruntime"}
    for row in rows:
        ratio = float(row.split()[-1])
        assert 0.05 < ratio < 20  # both sides measured (a shared CI machine is noisy: no tighter bound here)
    assert "2 artifacts; median ratio" in out
    code, _, err = run_cli(["crosscheck", tmp_path / "run", "--batch", "3"], capsys)
    assert code == 2 and "no latency at batch 3; measured: 1, 8" in err
