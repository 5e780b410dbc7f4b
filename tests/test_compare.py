"""`bench compare BASELINE CANDIDATE`: exit 1 on an accuracy drop or a p50 slowdown beyond the thresholds."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def _run_dir(path, clean, robust, p50):
    path.mkdir()
    (path / "run.json").write_text(json.dumps({"name": path.name, "cache_dir": str(path)}))
    record = {
        "cell_id": "mlp/standard/none/eager/pgd",
        "status": "ok",
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "latency_ms": {"1": {"p50": p50}},
        "model_size_bytes": 1000,
    }
    (path / "cells.jsonl").write_text(json.dumps(record) + "\n")
    return path


def test_same_numbers_are_no_regression(tmp_path, capsys):
    base = _run_dir(tmp_path / "base", 0.95, 0.40, 1.0)
    cand = _run_dir(tmp_path / "cand", 0.95, 0.40, 1.05)
    code, out, _ = run_cli(["compare", base, cand], capsys)
    assert code == 0
    assert "1 cells compared, 0 regressed" in out


def test_accuracy_drop_and_slowdown_are_regressions(tmp_path, capsys):
    base = _run_dir(tmp_path / "base", 0.95, 0.40, 1.0)
    cand = _run_dir(tmp_path / "cand", 0.92, 0.40, 1.25)
    code, out, _ = run_cli(["compare", base, cand], capsys)
    assert code == 1
    assert "clean_accuracy 0.950 -> 0.920" in out and "p50 latency at batch 1 x1.25" in out


def test_compare_of_a_missing_run_is_a_user_error(tmp_path, capsys):
    code, _, err = run_cli(["compare", tmp_path / "nope", tmp_path / "nope2"], capsys)
    assert code == 2 and "not a run directory" in err
