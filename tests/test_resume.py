"""A run killed part way (SIGKILL or Ctrl-C) and resumed: no duplicate, no lost record, no recomputed stage.

Records are written a group at a time (the cells sharing one trained model, whose artifacts are measured together),
so a kill loses at most the records of the group in flight; their finished stages are cached."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time

import pytest

from bench import jsonl
from tests.conftest import TINY_SUITE, run_cli, write_suite

SUITE = copy.deepcopy(TINY_SUITE) | {
    "models": [{"name": "mlp", "hidden": [32]}, {"name": "mlp", "hidden": [16], "label": "mlp-small"}],
    "compressions": ["none", {"name": "prune", "ratio": [0.3, 0.5]}],
    "attacks": ["none", {"name": "fgsm", "eps": [0.05, 0.1]}],
}
GROUP = 3 * 3  # the cells of one trained model
N_CELLS = 2 * GROUP


def _start(suite, out, cache):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "run",
            str(suite),
            "--out",
            str(out),
            "--cache",
            str(cache),
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell that started us in the background may ignore SIGINT, and Python then keeps ignoring it:
        # restore the default so that the child behaves as under a terminal's Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_records(path, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(jsonl.read(path)) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before {n} records: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("run too slow")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_interrupted_run_resumes_missing_cells_only(tmp_path, capsys, sig):
    suite = write_suite(tmp_path / "s.yaml", SUITE)
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = _start(suite, out, cache)
    _wait_for_records(out / "cells.jsonl", GROUP, proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    before = jsonl.read(out / "cells.jsonl")
    assert len(before) == GROUP  # the first group, whole; the second was in flight
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert "--resume" in proc.stderr.read()
        assert json.loads((out / "run.json").read_text())["status"] == "interrupted"

    # Without --resume the run directory is protected.
    code, _, err = run_cli(["run", suite, "--out", out, "--cache", cache, "--no-progress"], capsys)
    assert code == 2 and "--resume" in err

    code, _, _ = run_cli(["run", suite, "--out", out, "--cache", cache, "--no-progress", "--resume"], capsys)
    assert code == 0
    after = jsonl.read(out / "cells.jsonl")
    ids = [r["cell_id"] for r in after]
    assert len(ids) == len(set(ids)) == N_CELLS
    assert [r["cell_id"] for r in after[: len(before)]] == [r["cell_id"] for r in before]
    # No stage is computed twice: what ran before the interruption is taken from the cache.
    stages = jsonl.read(out / "stages.jsonl")
    for kind in ("train", "compress", "export", "measure", "evaluate"):
        built = [s["key"] for s in stages if s["kind"] == kind and not s["cache_hit"]]
        assert len(built) == len(set(built)), kind
    assert len({s["key"] for s in stages if s["kind"] == "train"}) == 2
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_torn_last_line_is_repaired_on_resume(tmp_path, capsys):
    suite = write_suite(tmp_path / "s.yaml", copy.deepcopy(TINY_SUITE))
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert run_cli(["run", suite, "--out", out, "--cache", cache, "--no-progress"], capsys)[0] == 0
    lines = (out / "cells.jsonl").read_text().splitlines()
    # simulate a process killed while writing the last record
    (out / "cells.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    assert run_cli(["run", suite, "--out", out, "--cache", cache, "--no-progress", "--resume"], capsys)[0] == 0
    after = jsonl.read(out / "cells.jsonl")
    assert [r["cell_id"] for r in after] == [json.loads(line)["cell_id"] for line in lines]

    # the same directory resumed with a changed suite: refused in one line naming the field, nothing written
    before = {name: (out / name).read_bytes() for name in ("run.json", "cells.jsonl", "stages.jsonl")}
    changed = copy.deepcopy(TINY_SUITE)
    changed["recipes"][0]["epochs"] = 2
    changed_file = write_suite(tmp_path / "changed.yaml", changed)
    code, _, err = run_cli(["run", changed_file, "--out", out, "--cache", cache, "--no-progress", "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"cannot resume {out}: suite.recipes[0].epochs is 3 in that run and 2 now" in err
    assert {name: (out / name).read_bytes() for name in before} == before
    # gates and the description judge and describe, they do not measure: such a resume goes on
    judged = copy.deepcopy(TINY_SUITE) | {"description": "new words", "gate": {"min_clean_accuracy": 0.1}}
    judged_file = write_suite(tmp_path / "judged.yaml", judged)
    assert run_cli(["run", judged_file, "--out", out, "--cache", cache, "--no-progress", "--resume"], capsys)[0] == 0
    # and another shard of the same suite is another experiment
    code, _, err = run_cli(["run", suite, "--out", out, "--cache", cache, "--resume", "--shard", "1/2"], capsys)
    assert code == 2 and "--shard is absent in that run and [1, 2] now" in err


def test_resume_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    suite = write_suite(tmp_path / "s.yaml", copy.deepcopy(TINY_SUITE))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    code, _, err = run_cli(["run", suite, "--out", tmp_path / "notes", "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'notes'} is not a run directory to resume (has no run.json)" in err
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]


def test_failed_cell_is_recorded_and_run_goes_on(tmp_path, capsys, caplog):
    data = copy.deepcopy(TINY_SUITE) | {"models": [{"name": "mlp", "hidden": [16]}, "tests.conftest:broken_net"]}
    suite = write_suite(tmp_path / "s.yaml", data)
    code, out, err = run_cli(
        ["run", suite, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-progress"], capsys
    )
    assert code == 1
    records = jsonl.read(tmp_path / "run" / "cells.jsonl")
    status = {r["cell_id"]: r["status"] for r in records}
    assert status["mlp/standard/none/eager/none"] == "ok"
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 2
    assert "this model is broken on purpose" in failed[0]["error"]
    assert "Traceback" in failed[0]["error"]
    # one line a user can act on: the stage, the exception, its message; the traceback in the record and the log
    summary = "train (tests.conftest:broken_net, standard): RuntimeError: this model is broken on purpose"
    assert [r["error_summary"] for r in failed] == [summary, summary]
    assert f"cell {failed[0]['cell_id']} failed: {summary}" in caplog.text  # the console's log line
    assert "Traceback" not in out + err + caplog.text
    log = (tmp_path / "run" / "errors.log").read_text()
    assert log.count("Traceback") == 2 and f"== {failed[1]['cell_id']}" in log
    assert "2 failed" in out
