"""Robust accuracy through the harness: threat models per target, worst case, invariants, a masked model flagged,
and determinism of a re-run."""

from __future__ import annotations

import json

import pytest

from bench import jsonl
from tests.helpers import run_cli, write_suite

SUITE = {
    "name": "robust",
    "seed": 0,
    "dataset": {"name": "digits", "eval_size": 100, "calibration_size": 32},
    "models": [{"name": "simple_cnn", "width": 8, "hidden": 32}, "tests.helpers:rounded_net"],
    "recipes": [{"name": "standard", "epochs": 5}],
    "compressions": ["none", "int8"],
    "runtimes": ["eager", {"name": "onnxruntime", "exporter": "torchscript"}],
    "attacks": [
        {"name": "fgsm", "eps": [0.0, 0.1]},
        {"name": "pgd", "eps": 0.1, "steps": 5},
        {"name": "square", "eps": 0.1, "queries": 200},
        {
            "name": "worst_case",
            "attacks": [{"name": "pgd", "eps": 0.1, "steps": 5}, {"name": "square", "eps": 0.1, "queries": 200}],
        },
    ],
    "measurement": {"profile": "smoke", "batch_sizes": [1]},
    "exclude": [{"compression": "int8", "runtime": "eager"}],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    suite = write_suite(root / "s.yaml", SUITE)
    from bench.cli import main

    assert main(["run", str(suite), "--out", str(root / "run"), "--cache", str(root / "cache"), "--no-progress"]) == 0
    records = {r["cell_id"]: r for r in jsonl.read(root / "run" / "cells.jsonl")}
    return root, suite, records


def test_threat_model_follows_the_target(run):
    _, _, records = run
    assert records["simple_cnn/standard/none/eager/pgd-0.1"]["threat_model"] == "white-box"
    ort = records["simple_cnn/standard/none/onnxruntime/pgd-0.1"]
    assert ort["threat_model"] == "transfer" and ort["surrogate"] == "float eager twin"
    int8 = records["simple_cnn/standard/int8/onnxruntime/pgd-0.1"]
    assert int8["surrogate"] == "float eager twin + straight-through fake-quant twin"
    square = records["simple_cnn/standard/int8/onnxruntime/square-0.1"]
    assert square["threat_model"] == "black-box" and square["surrogate"] is None
    assert 0 < square["queries"]["mean"] <= 200


def test_eps_zero_is_clean_and_worst_case_is_worst(run):
    _, _, records = run
    for cell_id, r in records.items():
        if cell_id.endswith("fgsm-0"):
            assert r["robust_accuracy"] == r["clean_accuracy"]
        if cell_id.endswith("worst_case"):
            parts = [c["robust_accuracy"] for c in r["components"].values()]
            assert r["robust_accuracy"] <= min(parts)
            assert r["threat_model"].startswith("worst of") or r["threat_model"] in ("white-box", "black-box")
        assert all(check["ok"] for name, check in r["checks"].items() if "gradient" not in name), r["checks"]


def test_gradient_masked_model_is_flagged(run):
    root, _, records = run
    masked = records["tests.helpers:rounded_net/standard/none/eager/pgd-0.1"]
    assert masked["checks"]["pgd: non-zero input gradients"]["ok"] is False
    invariants = json.loads((root / "run" / "run.json").read_text())["invariants"]
    flagged = {v["artifact"] for v in invariants["violations"] if "gradient masking" in v["check"]}
    assert "digits/tests.helpers:rounded_net/standard/none/eager" in flagged
    assert not any("simple_cnn" in a for a in flagged)
    assert records["simple_cnn/standard/none/eager/pgd-0.1"]["checks"]["pgd: non-zero input gradients"]["ok"]


@pytest.mark.slow
def test_same_seed_same_robust_accuracy_on_a_fresh_run(run, tmp_path, capsys):
    _, suite, records = run
    code, _, _ = run_cli(
        ["run", suite, "--out", tmp_path / "again", "--cache", tmp_path / "cache", "--no-progress"], capsys
    )
    assert code == 0
    for r in jsonl.read(tmp_path / "again" / "cells.jsonl"):
        assert r["robust_accuracy"] == records[r["cell_id"]]["robust_accuracy"], r["cell_id"]
