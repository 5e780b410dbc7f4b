"""`pytest --benchmark` (bench/pytest_plugin.py, the `pytest11` plugin) in a fresh directory of a user's: only a
`pytest.ini`, a tiny suite, the user's model package and a test of theirs. Each check runs pytest in a subprocess
there; one stage cache is shared by the whole module, so the cells are computed once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = """\
name: laptop
seed: 0
dataset: {name: digits, eval_size: 100, calibration_size: 32}
models:
  - {name: "mymodels.nets:tiny_mlp", label: tiny, kwargs: {hidden: 16}}
recipes:
  - {name: standard, epochs: 2}
runtimes:
  - eager
  - {name: onnxruntime, exporter: torchscript}
  - {name: onnxruntime, exporter: torchscript, providers: [tensorrt], label: ort-trt}
attacks:
  - none
  - {name: fgsm, eps: 0.1}
measurement: {profile: smoke, batch_sizes: [8]}
"""

MODEL = """\
from torch import nn


def tiny_mlp(num_classes, in_shape, hidden=16):
    size = 1
    for d in in_shape:
        size *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
"""

CELLS = [f"tiny/standard/none/{runtime}/{attack}" for runtime in ("eager", "onnxruntime", "ort-trt")
         for attack in ("none", "fgsm-0.1")]  # fmt: skip
FAST = ["--benchmark-max-time=0.02", "--benchmark-min-rounds=3", "-p", "no:cacheprovider"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("laptop")
    (root / "pytest.ini").write_text("[pytest]\nbench_suite = suite.yaml\n")
    (root / "suite.yaml").write_text(SUITE)
    (root / "mymodels").mkdir()
    (root / "mymodels" / "__init__.py").write_text("")
    (root / "mymodels" / "nets.py").write_text(MODEL)
    (root / "test_user.py").write_text("def test_users_own():\n    assert 1 + 1 == 2\n")
    gate = SUITE.replace("name: laptop", "name: gated") + "gate: {min_clean_accuracy: 0.999}\n"
    (root / "gated.yaml").write_text(gate)
    # p99 from the smoke profile's few samples: the latency gate cannot tell
    # (5 timed calls whatever the machine's speed: too few for a p99 on any machine)
    unsure = (
        SUITE.replace("name: laptop", "name: unsure").replace(
            "measurement: {profile: smoke, batch_sizes: [8]}",
            "measurement: {profile: smoke, batch_sizes: [8], min_iterations: 5, min_duration_s: 0}",
        )
        + "gate: {max_latency_ms: {batch: 8, percentile: p99, value: 0.0001}}\n"
    )
    (root / "unsure.yaml").write_text(unsure)
    return root


@pytest.fixture(scope="module")
def pytest_in(project: Path, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")

    def run(*args: str, program: tuple[str, ...] = ("-m", "pytest")) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        if program == ("-m", "pytest"):
            args = (f"--bench-cache={cache}", *args)
        return subprocess.run(
            [sys.executable, *program, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
        )

    return run


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_plain_pytest_is_untouched(pytest_in) -> None:
    out = _ok(pytest_in("-q"))
    assert "1 passed" in out and "test_cell" not in out
    out = _ok(pytest_in("--collect-only", "-q"))
    assert "test_cell" not in out


def test_one_item_per_cell(pytest_in) -> None:
    out = _ok(pytest_in("--benchmark", "--collect-only", "-q"))
    for cell in CELLS:
        assert f"suite.yaml::test_cell[{cell}]" in out
    assert "test_user.py::test_users_own" in out
    assert "7 tests collected" in out


def test_run_save_compare(pytest_in, project: Path, tmp_path: Path) -> None:
    storage = f"file://{tmp_path / 'store'}"
    result = pytest_in(
        "--benchmark", "-rs", "--benchmark-json=out.json", "--benchmark-autosave", f"--benchmark-storage={storage}",
        *FAST,
    )  # fmt: skip
    out = _ok(result)
    assert "5 passed, 2 skipped" in out, out
    # the skipped cells' reason, at the suite file (not at bench/pytest_plugin.py)
    assert "SKIPPED [2] suite.yaml: ONNX Runtime here has no TensorrtExecutionProvider" in out, out
    benchmarks = {b["param"]: b for b in json.loads((project / "out.json").read_text())["benchmarks"]}
    assert set(benchmarks) == set(CELLS[:4])
    info = benchmarks["tiny/standard/none/onnxruntime/fgsm-0.1"]["extra_info"]
    assert info["cell_id"] == "tiny/standard/none/onnxruntime/fgsm-0.1"
    assert 0 < info["clean_accuracy"] <= 1 and info["robust_accuracy"] is not None
    assert info["threat_model"] and info["model_size_bytes"] > 0 and info["params"] > 0
    assert info["peak_memory_mb"] > 0 and info["environment"]["python"]

    # a branch compared against the saved baseline; -k selects cells by id
    result = pytest_in(
        "--benchmark", "-k", "onnxruntime", "--benchmark-compare", "--benchmark-compare-fail=median:10000%",
        f"--benchmark-storage={storage}", *FAST,
    )  # fmt: skip
    out = _ok(result)
    assert "2 passed, 5 deselected" in out, out
    assert "0001_" in out and "NOW" in out  # the comparison table: the saved run beside this one

    cli = ("-c", "import sys; from pytest_benchmark.cli import main; sys.exit(main())")
    result = pytest_in(f"--storage={storage}", "compare", program=cli)  # `pytest-benchmark compare`
    assert "test_cell[tiny/standard/none/eager/fgsm-0.1]" in _ok(result)


def test_failed_gate_fails_the_item(pytest_in) -> None:
    result = pytest_in("--benchmark", "--suite", "gated.yaml", "-k", "eager and not fgsm", "--benchmark-disable", *FAST)
    assert result.returncode == 1, result.stdout[-4000:]
    out = result.stdout
    assert "tiny/standard/none/eager/none: gate min_clean_accuracy failed: value 0." in out, out
    assert "limit 0.999" in out
    assert "1 failed" in out
    assert "All traceback entries are hidden" not in out  # the message alone, no pytest boilerplate


def test_inconclusive_gate_warns(pytest_in) -> None:
    result = pytest_in("--benchmark", "--suite=unsure.yaml", "-k", "eager and not fgsm", "--benchmark-disable", *FAST)
    out = _ok(result)
    assert "1 passed" in out, out
    assert "BenchGateWarning: tiny/standard/none/eager/none: gate max_latency_ms inconclusive" in out, out


def test_suite_as_a_separate_word(pytest_in, tmp_path: Path) -> None:
    # inside the project: both forms
    for args in (("--suite", "gated.yaml"), ("--suite=gated.yaml",)):
        out = _ok(pytest_in("--benchmark", *args, "--collect-only", "-q"))
        assert "gated.yaml::test_cell[tiny/standard/none/eager/none]" in out, out
    # a suite in another project: pytest would take it for a test path and that project's ini for the config
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pytest.ini").write_text("[pytest]\naddopts = -x\n")
    (elsewhere / "suite.yaml").write_text(SUITE)
    suite = str(elsewhere / "suite.yaml")
    result = pytest_in("--benchmark", "--suite", suite, "--collect-only", "-q")
    assert result.returncode == 4, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"write --suite={suite}" in result.stderr, result.stderr
    out = _ok(pytest_in("--benchmark", f"--suite={suite}", "--collect-only", "-q"))
    assert "test_cell[tiny/standard/none/eager/none]" in out and "test_user.py::test_users_own" in out, out
