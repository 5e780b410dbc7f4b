"""`bench run --executor ray` on a local Ray instance started by the tests: the same cells and exactly the same
accuracies as the local executor, each unique stage run once, a stage failing on a worker recorded with its cause,
a worker that dies retried and its cell recorded once, a killed driver resumed.

The two-node cluster (separate caches, artifacts travelling) is tests/test_ray_cluster.py.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bench import jsonl
from bench.cli import main
from tests.conftest import records, tiny_suite, write_suite

ray = pytest.importorskip("ray", reason="the Ray executor's tests need Ray: pip install -e '.[ray]'")

# every runtime family and a compression that lowers, two groups (models), an attack: small but not trivial
SUITE = tiny_suite(
    models=[{"name": "mlp", "hidden": [32]}, {"name": "simple_cnn", "width": 4, "hidden": 16}],
    compressions=["none", "int8"],
    runtimes=["eager", "onnxruntime"],
)


@pytest.fixture(scope="module")
def local_ray() -> Any:
    """One local Ray instance for this module (the executor joins an instance that is already up)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def run(root: Path, data: dict[str, Any], name: str, *extra: str) -> tuple[int, dict[str, dict[str, Any]]]:
    suite = write_suite(root / f"{name}.yaml", data)
    args = ["run", suite, "--out", root / name, "--cache", root / f"{name}-cache", "--no-progress", *extra]
    code = main([str(a) for a in args])
    return code, records(root / name)


def computed(run_dir: Path) -> collections.Counter:
    """How many times each stage (kind, key) was computed (not taken from the cache) in a run."""
    lines = jsonl.read(run_dir / "stages.jsonl")
    return collections.Counter((line["kind"], line["key"]) for line in lines if not line["cache_hit"])


def test_ray_gives_the_local_executors_records(local_ray: Any, tmp_path: Path) -> None:
    code, local = run(tmp_path, SUITE, "local")
    assert code == 0
    code, remote = run(tmp_path, SUITE, "ray", "--executor", "ray")
    assert code == 0
    assert set(remote) == set(local) and len(local) == 16
    for cell_id, record in remote.items():
        assert record["status"] == "ok", record.get("error")
        assert record["clean_accuracy"] == local[cell_id]["clean_accuracy"], cell_id
        assert record["robust_accuracy"] == local[cell_id]["robust_accuracy"], cell_id
        assert record["stages"] == local[cell_id]["stages"] | {"measure": record["stages"]["measure"]}
        assert record["latency_ms"]["1"]["p50"] > 0
        assert "ray node" in record["measurement"]["node"]
    counts = computed(tmp_path / "ray")
    assert counts and max(counts.values()) == 1  # each unique stage once
    assert sum(kind == "train" for kind, _ in counts) == 2
    run_meta = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run_meta["options"]["executor"] == "ray" and run_meta["status"] == "complete"


def test_a_stage_failing_on_a_worker_fails_its_cells_with_the_cause(local_ray: Any, tmp_path: Path) -> None:
    data = tiny_suite(models=[{"name": "mlp", "hidden": [16]}, "tests.conftest:broken_net"])
    code, got = run(tmp_path, data, "ray", "--executor", "ray")
    assert code == 1
    broken = [r for r in got.values() if "broken_net" in r["labels"]["model"]]
    assert len(broken) == 2 and all(r["status"] == "failed" for r in broken)
    assert broken[0]["error_summary"].startswith("train (tests.conftest:broken_net")
    assert "this model is broken on purpose" in broken[0]["error_summary"]
    assert "Traceback" in broken[0]["error"]
    assert all(r["status"] == "ok" for r in got.values() if r["labels"]["model"] == "mlp")
    assert "broken on purpose" in (tmp_path / "ray" / "errors.log").read_text()


class DiesOnce(nn.Module):
    """A model whose first training step kills its process (a lost worker), once: the marker file says it did."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.fc = nn.Linear(int(torch.tensor(in_shape).prod()), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not os.path.exists(self.marker):
            Path(self.marker).write_text("died")
            os._exit(1)
        return self.fc(x.flatten(1))


def dies_once(num_classes: int, in_shape: tuple[int, int, int], marker: str) -> nn.Module:
    return DiesOnce(num_classes, in_shape, marker)


def test_a_worker_that_dies_is_retried_and_its_cells_recorded_once(local_ray: Any, tmp_path: Path) -> None:
    # the driver has loaded a module of the model's package that no worker imports (as a full test run has): the
    # workers must still key the stages with the driver's hash of the package's source
    importlib.import_module("tests.fake_runs")
    marker = tmp_path / "died"
    data = tiny_suite(models=[{"name": "tests.test_ray_executor:dies_once", "kwargs": {"marker": str(marker)}}])
    code, got = run(tmp_path, data, "ray", "--executor", "ray")
    assert marker.read_text() == "died"  # the first attempt's worker process exited
    assert code == 0, [r.get("error") for r in got.values()]
    lines = jsonl.read(tmp_path / "ray" / "cells.jsonl")
    assert sorted(r["cell_id"] for r in lines) == sorted(got) and len(got) == 2
    assert all(r["status"] == "ok" for r in got.values())


def test_ray_without_ray_installed_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    suite = write_suite(tmp_path / "s.yaml", tiny_suite())
    code = main(["run", str(suite), "--out", str(tmp_path / "out"), "--executor", "ray", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--executor: the Ray executor needs Ray: pip install -e '.[ray]'" in err
    assert not (tmp_path / "out").exists()


def test_a_killed_driver_resumes_without_recomputing_finished_stages(tmp_path: Path) -> None:
    # two groups (models) of two cells: the driver is killed once the first group is recorded or the first
    # evaluation has landed (Ray may finish both groups close together; a killed run must be part-way)
    small = tiny_suite(models=[{"name": "mlp", "hidden": [32]}, {"name": "mlp", "hidden": [16]}])
    suite = write_suite(tmp_path / "s.yaml", small)
    out, cache = tmp_path / "run", tmp_path / "cache"
    cmd = [sys.executable, "-m", "bench.cli", "run", str(suite), "--out", str(out), "--cache", str(cache)]
    cmd += ["--no-progress", "--executor", "ray"]
    driver = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        evaluated = any(kind == "evaluate" for kind, _ in computed(out))  # an absent log reads as empty
        if evaluated or jsonl.read(out / "cells.jsonl"):  # kill the driver, hard
            os.killpg(driver.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    driver.wait(timeout=60)
    first = jsonl.read(out / "cells.jsonl")
    assert len(first) < 4, "the run must be killed part-way"
    before = computed(out)
    assert any(kind == "train" for kind, _ in before)  # stages finished before the kill

    done = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = jsonl.read(out / "cells.jsonl")
    assert len(lines) == 4 and len({r["cell_id"] for r in lines}) == 4  # every cell recorded once
    assert lines[: len(first)] == first
    after = computed(out)
    again = [stage for stage in before if after[stage] > before[stage]]
    assert not again, f"stages finished before the kill were computed again: {again}"


def test_resources_no_node_can_give_are_an_input_error(local_ray: Any, tmp_path: Path, capsys) -> None:
    suite = write_suite(tmp_path / "s.yaml", tiny_suite(resources={"train": {"cpus": 8}}))
    code = main(["run", str(suite), "--out", str(tmp_path / "out"), "--executor", "ray", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("resources.train.cpus: 8 cpus asked, the largest Ray node has 2")
    assert not (tmp_path / "out").exists()
