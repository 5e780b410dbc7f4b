"""Planning at scale: a 20,000-cell suite is listed (parsed, expanded, checked against its data) in a blink, and the
runner's own work per cell, with every stage stubbed, is a few milliseconds.

The timings are benchmarks (`pytest --benchmark`, group `planning`); the default run checks what they time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from pathlib import Path
from typing import Any

import pytest

from bench import runner
from bench.cli import main
from bench.matrix import build_cells
from bench.pipeline import Pipeline
from bench.suite import load_suite
from tests.conftest import records, tiny_suite, write_suite

EPS = [round(0.001 * i, 3) for i in range(1, 51)]
# 4 models x 2 recipes x 9 compressions x 3 runtimes x 101 attack entries = 21,816 cells
BIG_SUITE = tiny_suite(
    models=[
        {"name": "mlp", "hidden": [32]},
        {"name": "mlp", "hidden": [64]},
        {"name": "simple_cnn", "width": 4},
        {"name": "simple_cnn", "width": 8},
    ],
    recipes=["standard", {"name": "standard", "epochs": 3}],
    compressions=[
        "none",
        {"name": "prune", "ratio": [0.1, 0.2, 0.3, 0.5]},
        "int8",
        "fp16",
        "qat",
        [{"name": "prune", "ratio": 0.5}, "int8"],
    ],
    runtimes=["eager", "torchscript", "onnxruntime"],
    attacks=["none", {"name": "pgd", "eps": EPS}, {"name": "fgsm", "eps": EPS}],
)


@pytest.fixture(scope="module")
def big_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_suite(tmp_path_factory.mktemp("big") / "big.yaml", BIG_SUITE)


def list_quietly(suite: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["list", str(suite)]) == 0
    return out.getvalue()


def test_a_20000_cell_suite_lists_every_cell(big_suite: Path) -> None:
    text = list_quietly(big_suite)
    assert text.splitlines()[-1] == "21816 cells: 20200 to run, 1616 skipped"
    rows = {tuple(line.split()) for line in text.splitlines()}
    assert ("simple_cnn-width=8/standard-epochs=3/prune-0.5+int8/onnxruntime/fgsm-0.05", "run") in rows


@pytest.mark.benchmark(group="planning")
def test_benchmark_list_20000_cells(benchmark: Any, big_suite: Path) -> None:
    """`bench list` of 21,816 cells in this process (torch and the harness already imported)."""
    text = benchmark.pedantic(list_quietly, args=(big_suite,), rounds=3, iterations=1)
    assert "21816 cells" in text


# -- the runner's own overhead per cell ------------------------------------------------------------------------------

MANY = tiny_suite(attacks=["none", {"name": "fgsm", "eps": EPS[:40]}])  # 41 cells of one trained model


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A real cell's stages (prepared, and its measurement), from a real run of a tiny suite."""
    root = tmp_path_factory.mktemp("real")
    suite = load_suite(write_suite(root / "s.yaml", tiny_suite(attacks=[{"name": "fgsm", "eps": 0.1}])))
    (cell,) = build_cells(suite)
    pipeline = Pipeline(suite, runner.StageCache(root / "cache"), root / "stages.jsonl", "cpu", 1, {}, False)
    pipeline.use_datasets(runner.check_suite(suite))
    stages = runner.run_stages(cell, pipeline)
    return dataclasses.replace(stages, measured=None), stages.measured


def run_stubbed(root: Path, captured: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> float:
    """Seconds per cell of `run_suite` over MANY with every stage replaced by the captured one."""
    prepared, measured = captured
    monkeypatch.setattr(runner, "prepare_stages", lambda cell, pipeline: prepared)
    monkeypatch.setattr(Pipeline, "measure_many", lambda self, items, timeout=None: [measured] * len(items))
    suite = load_suite(write_suite(root / "many.yaml", MANY))
    start = time.perf_counter()
    runner.run_suite(suite, root / "run", cache_dir=root / "cache", progress=False)
    return (time.perf_counter() - start) / (1 + len(MANY["attacks"][1]["eps"]))


def test_the_stubbed_runner_writes_every_record(
    tmp_path: Path, captured: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_stubbed(tmp_path, captured, monkeypatch)
    got = records(tmp_path / "run")
    assert len(got) == 41 and all(r["status"] == "ok" for r in got.values())
    assert {r["clean_accuracy"] for r in got.values()} == {captured[0].evaluated.meta["clean_accuracy"]}


@pytest.mark.benchmark(group="planning")
def test_benchmark_runner_overhead_per_cell(
    benchmark: Any, tmp_path_factory: pytest.TempPathFactory, captured: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's work per cell beyond its stages (records, evidence files, progress), in seconds per cell."""
    per_cell = benchmark.pedantic(
        lambda: run_stubbed(tmp_path_factory.mktemp("stub"), captured, monkeypatch), rounds=3, iterations=1
    )
    benchmark.extra_info["seconds_per_cell"] = per_cell
