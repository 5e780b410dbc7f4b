"""CellRecord: what the runner writes round-trips through from_json / to_json unchanged (keys, order, values), and
records written before the typed record (or by hand) still load, losing nothing."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import bench
from bench.record import SCHEMA_VERSION, CellRecord, LatencyStats, read_records
from tests.conftest import TINY_SUITE, run_cli, write_suite

IDENTITY_KEYS = [
    "cell_id",
    *("model", "recipe", "compression", "runtime", "attack"),
    *("labels", "status", "reason", "error", "error_summary", "dataset", "seed", "device", "settings_hash"),
]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with ok, skipped (a missing ONNX Runtime provider) and failed (a broken model) cells."""
    root = tmp_path_factory.mktemp("record")
    data = copy.deepcopy(TINY_SUITE) | {
        "models": [{"name": "mlp", "hidden": [16]}, "tests.conftest:broken_net"],
        "runtimes": ["eager", {"name": "onnxruntime", "providers": ["tensorrt"]}],
    }
    suite = write_suite(root / "s.yaml", data)
    from bench.cli import main

    main([str(a) for a in ["run", suite, "--out", root / "run", "--cache", root / "cache", "--no-progress"]])
    return root / "run"


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]


def test_every_written_record_round_trips_exactly(mixed_run: Path) -> None:
    lines = _lines(mixed_run)
    assert {r["status"] for r in lines} == {"ok", "skipped", "failed"}
    for raw in lines:
        record = CellRecord.from_json(raw)
        assert record.extra == {}, record.extra  # every key the runner writes is a typed field
        assert json.dumps(record.to_json()) == json.dumps(raw)  # same keys, same order, same values
        assert CellRecord.from_json(record.to_json()) == record


def test_ok_record_is_typed(mixed_run: Path) -> None:
    ok = next(CellRecord.from_json(r) for r in _lines(mixed_run) if r["status"] == "ok")
    assert isinstance(ok.latency_ms, dict) and isinstance(ok.latency_ms["1"], LatencyStats)
    assert ok.latency_ms["1"].p50 > 0 and ok.latency_ms["1"].n >= 5
    assert ok.costs is not None and ok.costs.train_s > 0
    assert ok.artifact is not None and Path(ok.artifact.path).is_file()
    assert ok.training is not None and ok.training.epochs == 3 and ok.training.recipe_extra == {}
    assert ok.budget is not None and ok.budget.within_budget is True
    assert ok.baseline is not None and ok.baseline.cell == "compression none, runtime eager"
    assert ok.stages is not None and set(ok.stages) == {"data", "train", "compress", "export", "measure", "evaluate"}


def test_skipped_and_failed_records_carry_only_their_identity(mixed_run: Path) -> None:
    lines = _lines(mixed_run)
    skipped = next(r for r in lines if r["status"] == "skipped")
    failed = next(r for r in lines if r["status"] == "failed")
    assert list(skipped) == list(failed) == [*IDENTITY_KEYS, "wall_s"]
    assert "no TensorrtExecutionProvider" in skipped["reason"] and skipped["error"] is None
    assert "this model is broken on purpose" in failed["error"] and failed["reason"] is None
    record = CellRecord.from_json(failed)
    assert record.clean_accuracy is None and record.latency_ms is None and record.costs is None


def test_load_run_gives_records_and_a_json_frame(mixed_run: Path) -> None:
    run = bench.load_run(mixed_run)
    assert run.schema_version == SCHEMA_VERSION == json.loads((mixed_run / "run.json").read_text())["schema_version"]
    assert all(isinstance(r, CellRecord) for r in run.records)
    assert [r.to_json() for r in run.records] == _lines(mixed_run)
    assert list(run.cells["cell_id"]) == [r.cell_id for r in run.records]
    ok = next(r for r in run.records if r.status == "ok")
    assert run.record(ok.cell_id) is ok
    assert run.artifact(ok.cell_id) == Path(ok.artifact.path)
    with pytest.raises(KeyError):
        run.record("no/such/cell")


OLD_RECORD: dict[str, Any] = {
    # a record written before the typed record, with keys a later version does not know about
    "cell_id": "mlp/standard/none/eager/none",
    "model": {"name": "mlp", "hidden": [16]},
    "status": "ok",
    "clean_accuracy": 0.9,
    "latency_ms": {"1": {"p50": 0.2, "p90": 0.3, "n": 50, "insufficient": ["p90", "p99"], "p999": 0.9}},
    "costs": {"train_s": 1.0, "compress_s": 0, "distill_s": 2.5},
    "legacy_score": 42,
    "wall_s": 3.0,
}


def test_old_record_loads_with_defaults_and_keeps_unknown_keys() -> None:
    record = CellRecord.from_json(copy.deepcopy(OLD_RECORD))
    assert record.extra == {"legacy_score": 42}
    assert record.robust_accuracy is None and record.artifact is None  # missing -> default
    assert record.latency_ms is not None and record.latency_ms["1"].extra == {"p999": 0.9}
    assert record.latency_ms["1"].p95 is None
    assert record.costs is not None and record.costs.extra == {"distill_s": 2.5} and record.costs.compress_s == 0
    out = record.to_json()
    assert out["legacy_score"] == 42 and out["costs"]["distill_s"] == 2.5 and out["latency_ms"]["1"]["p999"] == 0.9
    assert CellRecord.from_json(out) == record and CellRecord.from_json(out).to_json() == out


def test_value_of_the_wrong_type_is_kept_where_it_was() -> None:
    raw = {"cell_id": "a/b/c/d/e", "status": "ok", "clean_accuracy": "high", "latency_ms": {"1": None}, "checks": []}
    record = CellRecord.from_json(raw)
    assert record.clean_accuracy is None and record.latency_ms is None and record.checks is None
    assert record.extra == {"clean_accuracy": "high", "latency_ms": {"1": None}, "checks": []}
    out = record.to_json()
    assert out["clean_accuracy"] == "high" and out["latency_ms"] == {"1": None} and out["checks"] == []
    keys = list(out)
    assert keys.index("status") < keys.index("clean_accuracy") < keys.index("latency_ms") < keys.index("checks")
    assert CellRecord.from_json(out) == record


def test_bools_are_not_numbers() -> None:
    record = CellRecord.from_json({"cell_id": "x", "n_eval": True, "seed": 0})
    assert record.n_eval is None and record.extra == {"n_eval": True} and record.seed == 0


def test_read_records_skips_torn_and_non_object_lines(tmp_path: Path) -> None:
    path = tmp_path / "cells.jsonl"
    path.write_text('{"cell_id": "a", "status": "ok"}\n[1, 2]\n"text"\n{"cell_id": "b", "status": "sk')
    assert [r.cell_id for r in read_records(path)] == ["a"]
    assert read_records(tmp_path / "missing.jsonl") == []


def test_run_json_without_schema_version_is_version_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"name": "old", "cache_dir": str(tmp_path / "cache")}))
    (run_dir / "cells.jsonl").write_text(json.dumps(OLD_RECORD) + "\n")
    run = bench.load_run(run_dir)
    assert run.schema_version == 1
    assert run.record(OLD_RECORD["cell_id"]).clean_accuracy == 0.9
    assert run.cells.loc[0, "legacy_score"] == 42
    code, out, _ = run_cli(["compare", run_dir, run_dir], capsys)
    assert code == 0 and "1 cells compared, 0 regressed" in out


def _stage(kind: str, meta: dict[str, Any], path: str = "/cache") -> Any:
    from bench.pipeline import StageResult

    return StageResult(kind, f"{kind}-key", Path(path), meta, cache_hit=False)


def test_assembly_from_stage_results_cuda_latency_and_quantization_cost() -> None:
    from bench.assemble import CellStages, identity_record, ok_record
    from bench.matrix import build_cells
    from bench.suite import load_suite
    from bench.training import TrainCost

    cell = build_cells(load_suite("suites/smoke.yaml"))[0]
    stats = {"p50": 1.0, "p90": 2.0, "p95": 2.5, "p99": 3.0, "mean": 1.2, "std": 0.1, "min": 0.9, "max": 3.1, "n": 70}
    stats |= {"insufficient": ["p95", "p99"]}
    worker = stats | {"warmup_s": 0.5, "timer": "cuda_events", "wall_p50": 1.1}  # the worker's CUDA form
    evaluation = {"clean_accuracy": 0.9, "robust_accuracy": 0.5, "threat_model": "white-box", "surrogate": None}
    evaluation |= {"n_eval": 10, "attack_s": 1.0, "eval_s": 0.5, "agreement": {"top1_agreement": 1.0}, "checks": {}}
    result = {"latency_ms": {"1": worker}, "throughput_sps": 1000.0, "peak_rss_mb": 300.0, "load_s": 0.1}
    result |= {"first_call_ms": 2.0, "baseline_rss_mb": 100.0, "inference_rss_delta_mb": 5.0, "peak_gpu_mb": 12.0}
    exported = {"format": "torch", "main_file": "model.pt", "meta": {"quantize_s": 0.25}}
    cost = dataclasses.asdict(TrainCost(3.0, 2, 100, 33.3, 0.25))
    stages = CellStages(
        data=_stage("data", {}),
        trained=_stage("train", {"cost": cost, "peak_memory_mb": 400.0}),
        compressed=_stage("compress", {"steps": [], "lowering": None, "params": 10, "macs": 20, "compress_s": 1.0}),
        exported=_stage("export", {"exported": exported, "files": {"model.pt": 5}, "size_bytes": 5, "sha256": "ab"}),
        measured=_stage("measure", {"result": result, "profile": "smoke", "threads": 2, "seconds": 4.0}),
        evaluated=_stage("evaluate", evaluation),
        baseline=_stage("evaluate", {"clean_accuracy": 0.95, "robust_accuracy": 0.5}),
    )
    stages.exported.meta["seconds"] = 2.0
    out = ok_record(identity_record(cell, 0, "cuda"), stages, 0.99).to_json()
    assert out["latency_ms"] == {"1": stats | {"wall_p50": 1.1}}
    assert list(out["latency_ms"]["1"])[-1] == "wall_p50"
    # quantization happens at export but is the compression's cost
    assert out["costs"] == {
        "train_s": 3.0,
        "compress_s": 1.25,
        "export_s": 1.75,
        "measure_s": 4.0,
        "attack_s": 1.0,
        "eval_s": 0.5,
    }
    assert out["measurement"]["peak_gpu_mb"] == 12.0 and out["artifact"]["path"] == "/cache/model.pt"
    assert out["training"] == cost | {"peak_memory_mb": 400.0}
    # below 99% of the baseline, but the fake stages keep no per-sample correctness: no paired test, no "lost"
    clean = {"value": 0.9, "baseline": 0.95, "kept": None, "verdict": "inconclusive", "limit": 0.99 * 0.95}
    assert out["budget"]["clean_accuracy"] == clean
    assert out["budget"]["within_budget"] is True and out["budget"]["verdict"] == "inconclusive"
    assert out["gates"] == {}
    assert list(out)[: len(IDENTITY_KEYS)] == IDENTITY_KEYS
    assert list(out)[-4:] == ["budget", "payoff", "gates", "wall_s"]
    assert CellRecord.from_json(out).to_json() == out
