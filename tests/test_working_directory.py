"""`bench` behaves the same from any working directory, one holding folders named `bench` and `models` included,
and ends quietly when its reader closes the pipe."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_SUITE, write_suite

BENCH = shutil.which("bench", path=str(Path(sys.executable).parent)) or "bench"  # the console script users run


def test_a_folder_named_bench_in_the_working_directory_changes_nothing(tmp_path):
    for name in ("bench", "models", "bench_models"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('the user folder was imported')\n")
    suite = copy.deepcopy(TINY_SUITE) | {"attacks": ["none"]}
    suite["runtimes"] = ["eager", {"name": "onnxruntime", "exporter": "torchscript"}]
    suite["recipes"] = [{"name": "ddp", "world_size": 2, "epochs": 1}]  # torchrun ranks start with `-m` too
    path = write_suite(tmp_path / "suite.yaml", suite)
    proc = subprocess.run(
        [BENCH, "run", path, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    records = [json.loads(line) for line in (tmp_path / "run" / "cells.jsonl").read_text().splitlines()]
    assert proc.returncode == 0, [r.get("error") for r in records] or proc.stderr[-2000:]  # a failure's full story
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert all(r["latency_ms"]["1"]["p50"] > 0 for r in records)  # the measurement workers ran the harness's code
    assert all(r["training"]["extra"]["processes"] == 2 for r in records)  # and so did the torchrun ranks


def test_a_closed_pipe_ends_bench_list_quietly(tmp_path):
    suite = copy.deepcopy(TINY_SUITE) | {"attacks": ["none", {"name": "fgsm", "eps": [0.01, 0.02, 0.03, 0.04]}]}
    path = write_suite(tmp_path / "suite.yaml", suite)
    proc = subprocess.run(f"'{BENCH}' list '{path}' | head -1", shell=True, capture_output=True, text=True, timeout=300)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
