"""Two `bench run`s sharing one cache at the same time (two nightly shards on one runner, a user re-running in a
second terminal) give identical records: a stage both build is committed once, and the run that loses the race
takes the winner's entry, measurement included."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import records, tiny_suite, write_suite


def test_two_runs_sharing_a_cache_at_the_same_time_give_identical_records(tmp_path):
    suite = write_suite(
        tmp_path / "s.yaml",
        tiny_suite(compressions=["none", {"name": "prune", "ratio": 0.5}], runtimes=["eager", "onnxruntime"]),
    )
    code = "import sys; from bench.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["run", suite, "--cache", tmp_path / "cache", "--no-progress"]
    runs = [
        subprocess.Popen(
            [sys.executable, "-P", "-c", code, *args, "--out", tmp_path / out],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for out in ("a", "b")
    ]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert len(a) == 8 and all(r["status"] == "ok" for r in a.values())
    for cell_id in a:  # everything but the wall time each run spent
        assert {k: v for k, v in a[cell_id].items() if k != "wall_s"} == {
            k: v for k, v in b[cell_id].items() if k != "wall_s"
        }
    leftovers = [p for p in (tmp_path / "cache").rglob(".tmp-*")]
    assert leftovers == []
