"""Suite gates (bench/gates.py) and the sample-size-aware accuracy budget (bench/checks.py): parsing, CLI
overrides, verdicts, exit codes, run.json counts and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.checks import budget_verdict
from bench.gates import GateConfig, accuracy_gate, evaluate_gates
from bench.matrix import build_cells
from bench.record import CellRecord, LatencyStats
from bench.suite import load_suite
from tests.conftest import run_cli, tiny_suite, write_suite

NONE_CELL = "mlp/standard/none/eager/none"
FGSM_CELL = "mlp/standard/none/eager/fgsm-0.1"


# -- the accuracy budget: a paired test on the same samples --------------------------------------------------------


def _paired(n: int, base_correct: int, lost: int, gained: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample correctness of a baseline (its first base_correct samples right) and of a cell that gets `lost`
    of those wrong and `gained` of the others right."""
    before = np.arange(n) < base_correct
    after = before.copy()
    after[:lost] = False
    after[base_correct : base_correct + gained] = True
    return before, after


def _budget(before: np.ndarray, after: np.ndarray, ratio: float = 0.99) -> dict[str, Any]:
    record, baseline = {"clean_accuracy": float(after.mean())}, {"clean_accuracy": float(before.mean())}
    return budget_verdict(record, baseline, ratio, {"clean_correct": after}, {"clean_correct": before})


def test_a_drop_of_4_samples_in_300_is_inconclusive_not_lost() -> None:
    # the default suite's simple_cnn/standard/int8/onnxruntime/pgd-0.1: 48.3% against 49.7%
    verdict = _budget(*_paired(300, 149, lost=4))
    clean = verdict["clean_accuracy"]
    assert clean["value"] < 0.99 * clean["baseline"]  # below the limit...
    assert clean["verdict"] == "inconclusive" and clean["kept"] is None  # ...but 4 samples cannot tell
    assert (clean["n"], clean["b"], clean["c"]) == (300, 4, 0)
    assert clean["p_value"] == pytest.approx(0.5**4)
    assert clean["ci"][0] < -4 / 300 < clean["ci"][1]
    assert verdict["within_budget"] is True and verdict["verdict"] == "inconclusive"


def test_a_20_point_drop_on_300_samples_is_lost() -> None:
    verdict = _budget(*_paired(300, 240, lost=60))
    clean = verdict["clean_accuracy"]
    assert clean["verdict"] == "lost" and clean["kept"] is False and clean["p_value"] < 1e-10
    assert clean["ci"][1] < 0
    assert verdict["within_budget"] is False and verdict["verdict"] == "lost"


def test_a_value_above_the_limit_is_kept_even_with_discordant_samples() -> None:
    verdict = _budget(*_paired(300, 240, lost=5, gained=3), ratio=0.95)  # 238 / 240 of the baseline
    assert verdict["clean_accuracy"]["verdict"] == "kept" and verdict["clean_accuracy"]["kept"] is True
    assert verdict["within_budget"] is True and verdict["verdict"] == "kept"


def test_without_per_sample_correctness_a_drop_is_inconclusive() -> None:
    verdict = budget_verdict({"clean_accuracy": 0.5, "robust_accuracy": None}, {"clean_accuracy": 0.9}, 0.99)
    assert verdict["clean_accuracy"]["verdict"] == "inconclusive" and verdict["robust_accuracy"] is None
    assert verdict["within_budget"] is True


# -- absolute accuracy gates: the exact binomial test ----------------------------------------------------------------


def test_accuracy_gate_respects_sample_size() -> None:
    assert accuracy_gate(0.95, 300, 0.9, "gate").verdict == "pass"
    unsure = accuracy_gate(118 / 120, 120, 0.99, "gate")  # 2 wrong of 120 against 99%: cannot tell
    assert unsure.verdict == "inconclusive" and unsure.correct == 118 and unsure.n == 120
    failed = accuracy_gate(0.80, 300, 0.9, "gate")
    assert failed.verdict == "fail" and failed.p_value < 0.05 and failed.ci[1] < 0.9


def test_latency_size_and_memory_gates_are_plain_comparisons() -> None:
    stats = LatencyStats(p50=1.0, p99=9.0, mean=2.0, n=20, insufficient=["p90", "p95", "p99"])
    record = CellRecord(status="ok", latency_ms={"1": stats}, model_size_bytes=3_000_000, peak_memory_mb=500.0)
    from bench.gates import LatencyLimit, Limit

    gates = evaluate_gates(
        record,
        {
            "max_latency_ms": Limit(LatencyLimit(1, "mean", 1.5), "gate"),
            "max_size_mb": Limit(5.0, "gate"),
            "max_memory_mb": Limit(400.0, "--gate"),
            "min_robust_accuracy": Limit(0.5, "gate"),  # no robust accuracy: not gated
        },
    )
    assert set(gates) == {"max_latency_ms", "max_size_mb", "max_memory_mb"}
    assert gates["max_latency_ms"].verdict == "fail" and gates["max_latency_ms"].value == 2.0
    assert gates["max_size_mb"].verdict == "pass" and gates["max_size_mb"].value == 3.0
    assert gates["max_memory_mb"].verdict == "fail" and gates["max_memory_mb"].source == "--gate"
    # a percentile measured from too few samples is never gated on
    p99 = evaluate_gates(record, {"max_latency_ms": Limit(LatencyLimit(1, "p99", 1.0), "gate")})["max_latency_ms"]
    assert p99.verdict == "inconclusive" and "too few" in p99.detail


# -- per-selection limits ----------------------------------------------------------------------------------------


def test_a_selection_applies_only_to_matching_cells(tmp_path: Path) -> None:
    gate = {
        "min_clean_accuracy": 0.5,
        "max_size_mb": 10,
        "select": [
            {"match": {"attack": "fgsm"}, "min_clean_accuracy": 0.8, "min_robust_accuracy": 0.1},
            {"match": {"attack": {"name": "fgsm", "eps": 0.1}}, "max_size_mb": 1},
        ],
    }
    suite = load_suite(write_suite(tmp_path / "s.yaml", tiny_suite(gate=gate)))
    assert isinstance(suite.gate, GateConfig)
    limits = {cell.cell_id: cell_limits for cell in build_cells(suite) if (cell_limits := suite.gate.for_cell(cell))}
    plain, fgsm = limits[NONE_CELL], limits[FGSM_CELL]
    assert {k: (v.value, v.source) for k, v in plain.items()} == {
        "min_clean_accuracy": (0.5, "gate"),
        "max_size_mb": (10.0, "gate"),
    }
    assert {k: (v.value, v.source) for k, v in fgsm.items()} == {
        "min_clean_accuracy": (0.8, "gate.select[0]"),
        "min_robust_accuracy": (0.1, "gate.select[0]"),
        "max_size_mb": (1.0, "gate.select[1]"),
    }
    resolved = suite.resolved()["gate"]
    assert resolved["latency_threshold"] == 0.10 and resolved["accuracy_threshold"] == 0.02
    assert resolved["select"][0] == gate["select"][0] and resolved["max_latency_ms"] is None
    again = load_suite(write_suite(tmp_path / "again.yaml", tiny_suite(gate=resolved)))  # run.json's form reads back
    assert again.gate == suite.gate


def test_thresholds_for_compare_are_kept(tmp_path: Path) -> None:
    suite = load_suite(
        write_suite(tmp_path / "s.yaml", tiny_suite(gate={"latency_threshold": 0.2, "accuracy_threshold": 0.05}))
    )
    assert (suite.gate.latency_threshold, suite.gate.accuracy_threshold) == (0.2, 0.05)
    assert suite.gate.for_cell(build_cells(suite)[0]) == {}


# -- bad input: one line naming the file and the field, exit 2 -----------------------------------------------------

LATENCY = {"batch": 1, "percentile": "p50", "value": 10}
BAD_GATES: dict[str, tuple[Any, str, str]] = {
    "unknown key": ({"max_latncy_ms": 1}, "gate.max_latncy_ms", "unknown key 'max_latncy_ms'"),
    "bad percentile": (
        {"max_latency_ms": LATENCY | {"percentile": "p98"}},
        "gate.max_latency_ms.percentile",
        "expected one of p50, p90, p95, p99, mean",
    ),
    "batch not measured": (
        {"max_latency_ms": LATENCY | {"batch": 4}},
        "gate.max_latency_ms.batch",
        "batch 4 is not measured; measurement.batch_sizes: 1, 8",
    ),
    "negative value": ({"max_size_mb": -1}, "gate.max_size_mb", "must be in (0, inf]"),
    "negative latency": ({"max_latency_ms": LATENCY | {"value": -5}}, "gate.max_latency_ms.value", "must be in"),
    "accuracy above 1": ({"min_clean_accuracy": 1.5}, "gate.min_clean_accuracy", "must be in [0, 1]"),
    "not a number": ({"budget": "high"}, "gate.budget", "expected a number"),
    "missing latency key": ({"max_latency_ms": {"batch": 1, "value": 3}}, "gate.max_latency_ms.percentile", "missing"),
    "select typo": (
        {"select": [{"match": {"runtime": "onnx"}, "max_size_mb": 1}]},
        "gate.select[0].match.runtime",
        "matches no runtime",
    ),
    "select without limit": ({"select": [{"match": {"runtime": "eager"}}]}, "gate.select[0]", "names no limit"),
    "select unknown key": (
        {"select": [{"match": {"runtime": "eager"}, "latency_threshold": 0.1}]},
        "gate.select[0].latency_threshold",
        "unknown key",
    ),
}


@pytest.mark.parametrize("case", BAD_GATES, ids=list(BAD_GATES))
def test_bad_gate_is_one_line_and_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gate, field, message = BAD_GATES[case]
    path = write_suite(tmp_path / "bad.yaml", tiny_suite(gate=gate))
    code, _, err = run_cli(["list", path], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"{path}: {field}: " in lines[0] and message in lines[0], lines[0]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("max_latency_ms=1:p98:10", "--gate max_latency_ms.percentile: expected one of"),
        ("max_latency_ms=64:p50:10", "--gate max_latency_ms.batch: batch 64 is not measured"),
        ("max_latency_ms=1:p50", "--gate max_latency_ms: expected BATCH:PERCENTILE:MS"),
        ("min_clean_accuracy=-0.1", "--gate min_clean_accuracy: must be in [0, 1]"),
        ("max_speed=3", "--gate max_speed: unknown key 'max_speed'"),
        ("budget", "--gate: expected KEY=VALUE"),
    ],
)
def test_bad_gate_option_is_one_line_and_exit_2(
    option: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path / "s.yaml", tiny_suite())
    code, _, err = run_cli(["run", suite, "--out", tmp_path / "run", "--gate", option], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "run").exists()


# -- bench run: verdicts recorded, failed gates printed, exit codes -----------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage cache for the runs of this module: the tiny suite's stages are computed once."""
    return tmp_path_factory.mktemp("gates-cache")


def _run(tmp_path: Path, cache: Path, capsys: Any, gate: dict[str, Any], *options: str) -> tuple[int, str, Path]:
    suite = write_suite(tmp_path / "s.yaml", tiny_suite(gate=gate))
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["run", suite, "--out", run_dir, "--cache", cache, "--no-progress", *options], capsys)
    assert "Traceback" not in err, err
    return code, out, run_dir


def _records(run_dir: Path) -> dict[str, dict[str, Any]]:
    lines = (run_dir / "cells.jsonl").read_text().splitlines()
    return {r["cell_id"]: r for r in map(json.loads, lines)}


def test_a_failing_latency_gate_exits_1_and_is_printed(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, run_dir = _run(
        tmp_path, cache, capsys, {"max_latency_ms": {"batch": 1, "percentile": "p50", "value": 1e-6}}
    )
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("gate failed: ")]
    assert len(failed) == 2, out
    assert any(line.startswith(f"gate failed: {NONE_CELL}: max_latency_ms: b1 p50 ") for line in failed)
    assert "2 gates failed, 0 inconclusive" in out
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["gates"] == {"checked": 2, "pass": 0, "fail": 2, "inconclusive": 0}
    assert meta["counts"]["failed"] == 0  # the cells are ok: a gate failed, not a cell
    gate = _records(run_dir)[NONE_CELL]["gates"]["max_latency_ms"]
    assert gate["verdict"] == "fail" and gate["limit"] == 1e-6 and gate["value"] > 1e-6
    assert (gate["batch"], gate["percentile"], gate["source"]) == (1, "p50", "gate")
    html = (run_dir / "report.html").read_text()
    assert html.index("2 failed gates") < html.index("<h2>Environment</h2>")  # near the top


def test_a_passing_suite_exits_0_and_records_each_gate(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = {
        "max_latency_ms": {"batch": 8, "percentile": "mean", "value": 10_000},
        "min_clean_accuracy": 0.5,
        "budget": 0.9,
        "max_size_mb": 100,
        "max_memory_mb": 100_000,
        "select": [{"match": {"attack": "fgsm"}, "min_robust_accuracy": 0.0}],
    }
    code, out, run_dir = _run(tmp_path, cache, capsys, gate)
    assert code == 0, out
    assert "0 gates failed, 0 inconclusive" in out and "gate failed" not in out
    records = _records(run_dir)
    common = {"max_latency_ms", "min_clean_accuracy", "budget", "max_size_mb", "max_memory_mb"}
    assert set(records[NONE_CELL]["gates"]) == common  # the selection's robust gate is not applied here
    assert set(records[FGSM_CELL]["gates"]) == common | {"min_robust_accuracy"}
    robust = records[FGSM_CELL]["gates"]["min_robust_accuracy"]
    assert robust["source"] == "gate.select[0]" and robust["verdict"] == "pass" and robust["n"] == 120
    budget = records[FGSM_CELL]["gates"]["budget"]
    assert budget["verdict"] == "pass" and budget["value"] == 1.0 and budget["limit"] == 0.9
    # the baseline cell is its own baseline: kept, with a paired test of nothing
    clean = records[FGSM_CELL]["budget"]["clean_accuracy"]
    assert clean["verdict"] == "kept" and (clean["n"], clean["b"], clean["c"]) == (120, 0, 0)
    assert records[FGSM_CELL]["budget"]["ratio"] == 0.9  # gate.budget overrides evaluation.budget
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["gates"] == {"checked": 11, "pass": 11, "fail": 0, "inconclusive": 0}
    assert meta["suite"]["gate"]["min_clean_accuracy"] == 0.5


def test_gate_option_overrides_the_suite(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failing = {"max_latency_ms": {"batch": 1, "percentile": "p50", "value": 1e-6}}
    options = ["--gate", "max_latency_ms=1:mean:100000", "--gate", "min_clean_accuracy=0.5"]
    code, out, run_dir = _run(tmp_path, cache, capsys, failing, *options)
    assert code == 0, out
    gates = _records(run_dir)[NONE_CELL]["gates"]
    assert gates["max_latency_ms"]["percentile"] == "mean" and gates["max_latency_ms"]["source"] == "--gate"
    assert gates["min_clean_accuracy"]["verdict"] == "pass"
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["suite"]["gate"]["max_latency_ms"] == {"batch": 1, "percentile": "mean", "value": 100000.0}
