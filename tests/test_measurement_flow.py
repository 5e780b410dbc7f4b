"""How a run measures: several processes per artifact with a reference workload, measurements reused from the cache
unless `--remeasure`, and a per-cell time limit that stops a hanging cell (and its measurement worker) while the
run goes on."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

from bench.evidence import read_timings
from tests.conftest import TINY_SUITE, run_cli, write_suite


def tiny(**changes) -> dict:
    suite = copy.deepcopy(TINY_SUITE) | changes
    suite["attacks"] = ["none"]
    return suite


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("processes")
    suite = tiny(measurement={"profile": "smoke", "batch_sizes": [1, 8], "processes": 2})
    path = write_suite(root / "suite.yaml", suite)
    return root, path


def test_each_artifact_is_timed_in_several_processes_with_a_reference_workload(two_process_run, capsys):
    root, suite = two_process_run
    code, _, err = run_cli(["run", suite, "--out", root / "a", "--cache", root / "cache", "--no-progress"], capsys)
    assert code == 0, err
    (timings,) = read_timings(root / "a").values()
    assert timings.fresh
    assert set(timings.processes) == {"1", "8"}
    assert all(len(per_batch) == 2 and all(len(p) >= 3 for p in per_batch) for per_batch in timings.processes.values())
    assert len(timings.reference_ms) == 2 and all(r > 0 for r in timings.reference_ms)
    (record,) = lines(root / "a" / "cells.jsonl")
    pooled = sum(len(p) for p in timings.processes["1"])
    assert record["latency_ms"]["1"]["n"] == pooled  # the record's statistics are over every process's samples


def test_a_cached_measurement_is_reused_unless_remeasure(two_process_run, capsys):
    root, suite = two_process_run
    args = ["--cache", root / "cache", "--no-progress"]
    if not (root / "a").exists():
        assert run_cli(["run", suite, "--out", root / "a", *args], capsys)[0] == 0
    assert run_cli(["run", suite, "--out", root / "b", *args], capsys)[0] == 0
    assert run_cli(["run", suite, "--out", root / "c", "--remeasure", *args], capsys)[0] == 0

    def measure_stage(run: str) -> dict:
        return next(s for s in lines(root / run / "stages.jsonl") if s["kind"] == "measure")

    assert measure_stage("b")["cache_hit"] is True
    assert measure_stage("c")["cache_hit"] is False
    assert [t.fresh for t in read_timings(root / "b").values()] == [False]
    assert [t.fresh for t in read_timings(root / "c").values()] == [True]
    # the other stages stay cached under --remeasure: only the timing is new
    assert all(s["cache_hit"] for s in lines(root / "c" / "stages.jsonl") if s["kind"] != "measure")


@pytest.mark.parametrize("when", ["always", "batch1"])
def test_a_hanging_cell_is_stopped_and_the_run_goes_on(tmp_path, capsys, when):
    """`always`: the forward sleeps in training; `batch1`: only in the measurement worker's single-sample calls."""
    suite = tiny(
        models=[{"name": "tests.conftest:sleepy_net", "kwargs": {"when": when}, "label": "sleepy"}, "mlp"],
        limits={"cell_timeout_s": 20},  # room for the mlp's cell on a busy machine; the sleeps are 120 s
    )
    path = write_suite(tmp_path / "suite.yaml", suite)
    start = time.perf_counter()
    code, _, _ = run_cli(
        ["run", path, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-progress"], capsys
    )
    assert code == 1  # a failed cell
    assert time.perf_counter() - start < 110  # stopped: one sleep alone is 120 s
    records = {r["cell_id"]: r for r in lines(tmp_path / "run" / "cells.jsonl")}
    sleepy = records["sleepy/standard/none/eager/none"]
    assert sleepy["status"] == "failed"
    assert "timeout after 20 s" in sleepy["error"]
    if when == "batch1":
        assert "measurement process stopped" in sleepy["error"]
    assert records["mlp/standard/none/eager/none"]["status"] == "ok"


def test_the_cli_time_limit_overrides_the_suite(tmp_path, capsys):
    suite = tiny(models=[{"name": "tests.conftest:sleepy_net", "label": "sleepy"}], limits={"cell_timeout_s": 600})
    path = write_suite(tmp_path / "suite.yaml", suite)
    args = [
        "run",
        path,
        "--out",
        tmp_path / "run",
        "--cache",
        tmp_path / "cache",
        "--no-progress",
        "--cell-timeout",
        "2",
    ]
    code, _, _ = run_cli(args, capsys)
    assert code == 1
    (record,) = lines(tmp_path / "run" / "cells.jsonl")
    assert "timeout after 2 s" in record["error"]
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error: exit 2 and one line
        run_cli(["run", path, "--cell-timeout", "-1"], capsys)
    assert exit_info.value.code == 2
    assert "argument --cell-timeout: expected a positive number of seconds, got -1" in capsys.readouterr().err


def test_compare_catches_a_real_slowdown_and_not_a_rerun(tmp_path, capsys):
    """Measured, not planted: the same model at 1 ms and at 2.5 ms of inference delay, 5 processes per run."""

    def run(name: str, delay_ms: float) -> Path:
        suite = tiny(
            models=[{"name": "tests.conftest:delayed_net", "kwargs": {"delay_ms": delay_ms}, "label": "delayed"}],
            measurement={"profile": "smoke", "batch_sizes": [1], "processes": 5, "memory": False},
        )
        path = write_suite(tmp_path / f"{name}.yaml", suite)
        args = ["run", path, "--out", tmp_path / name, "--cache", tmp_path / f"cache-{name}", "--no-progress"]
        assert run_cli(args, capsys)[0] == 0
        return tmp_path / name

    base, rerun, slow = run("base", 1.0), run("rerun", 1.0), run("slow", 2.5)
    code, out, _ = run_cli(["compare", base, rerun], capsys)
    assert code == 0, out
    code, out, _ = run_cli(["compare", base, slow, "--json", tmp_path / "slow.json"], capsys)
    assert code == 1, out
    (row,) = json.loads((tmp_path / "slow.json").read_text())["rows"]
    assert row["status"] == "regression"
    (latency,) = row["latency"]
    assert latency["raw_ratio"] > 1.5 and latency["p_value"] <= 0.01 and latency["processes"] == [5, 5]
    assert "model" in json.dumps(row["settings"])  # the delay is a model setting: the line says it differs
