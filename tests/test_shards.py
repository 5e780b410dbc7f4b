"""`bench run --shard I/N` splits a suite into cost-balanced shards that keep each training's cells together
(bench.shards), and `bench merge` turns the shards' run directories into one run equal to a single run of the
suite (bench.merge), refusing shards that do not make up one run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from bench import jsonl, shards
from bench.assemble import identity_record
from bench.matrix import build_cells, select_shard
from bench.merge import suite_order
from bench.suite import load_suite
from tests.conftest import run_cli, tiny_suite, write_suite

# 8 trainings (2 datasets x 2 models x 2 recipes), 7 artifacts each, 3 attacks, an exclude rule and two include
# rules: one re-adds an excluded cell, one adds a cell with an attack that is in no axis list.
MATRIX = tiny_suite(
    datasets=[{"name": "digits"}, {"name": "synthetic"}],
    models=[{"name": "mlp", "hidden": [32]}, "simple_cnn"],
    recipes=[{"name": "standard", "epochs": 2}, {"name": "pgd_at", "epochs": 2}],
    compressions=["none", {"name": "prune", "ratio": 0.5}, "int8", "fp16"],
    runtimes=["eager", "torchscript"],
    attacks=["none", {"name": "fgsm", "eps": 0.1}, {"name": "pgd", "eps": 0.1}],
    exclude=[{"compression": "fp16", "runtime": "torchscript"}],
    include=[
        {"dataset": "synthetic", "model": "mlp", "recipe": "standard", "compression": "fp16"}
        | {"runtime": "torchscript", "attack": "none"},
        {"dataset": "digits", "model": "mlp", "recipe": "standard", "compression": "none", "runtime": "eager"}
        | {"attack": {"name": "pgd", "eps": 0.2}},
    ],
)
del MATRIX["dataset"]

# One expensive training (40 epochs) beside four cheap ones (2 epochs), 6 artifacts and 3 attacks each.
LOPSIDED = tiny_suite(
    models=[{"name": "mlp", "hidden": [h], "label": f"m{i}"} for i, h in enumerate((64, 32, 24, 16, 8))],
    recipes=[{"name": "standard", "epochs": 40, "label": "long"}, {"name": "standard", "epochs": 2, "label": "short"}],
    compressions=["none", {"name": "prune", "ratio": 0.5}, "int8"],
    runtimes=["eager", "torchscript"],
    attacks=["none", {"name": "fgsm", "eps": 0.1}, {"name": "pgd", "eps": 0.1}],
    exclude=[{"model": ["m1", "m2", "m3", "m4"], "recipe": "long"}, {"model": "m0", "recipe": "short"}],
)


def cells_of(tmp_path: Path, data: dict) -> list:
    return build_cells(load_suite(write_suite(tmp_path / "suite.yaml", data)))


def test_shards_partition_the_cells_and_keep_trainings_together(tmp_path):
    cells = cells_of(tmp_path, MATRIX)
    trainings = defaultdict(set)
    artifacts = defaultdict(set)
    for i, cell in enumerate(cells):
        trainings[shards.group_key(cell)].add(i)
        artifacts[shards.artifact_key(cell)].add(i)
    assert len(cells) == 170 and len(trainings) == 8
    for count in range(1, 13):
        split = shards.assign(cells, count)
        assert split == shards.assign(cells, count)  # deterministic
        assert sorted(i for s in split for i in s) == list(range(len(cells)))  # every cell exactly once
        assert all(s == sorted(s) for s in split)  # suite order
        assert [[c.cell_id for c in select_shard(cells, (i + 1, count))] for i in range(count)] == [
            [cells[i].cell_id for i in s] for s in split
        ]
        home = {i: k for k, s in enumerate(split) for i in s}
        # a training's cells share a shard while there are enough trainings; an artifact's cells always do
        units = trainings if count <= len(trainings) else artifacts
        assert all(len({home[i] for i in members}) == 1 for members in units.values())
        assert all(split), f"an empty shard out of {count}"


def test_the_split_does_not_depend_on_the_python_process(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", MATRIX)
    here = [[c.cell_id for c in select_shard(build_cells(load_suite(suite)), (i, 3))] for i in (1, 2, 3)]
    script = (
        "import json, sys; from bench.matrix import build_cells, select_shard; from bench.suite import load_suite; "
        "cells = build_cells(load_suite(sys.argv[1])); "
        "print(json.dumps([[c.cell_id for c in select_shard(cells, (i, 3))] for i in (1, 2, 3)]))"
    )
    env = os.environ | {"PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script, suite], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == here


def test_a_lopsided_suite_is_balanced_better_than_round_robin(tmp_path):
    cells = cells_of(tmp_path, LOPSIDED)
    total = shards.cost_of(cells)  # one machine, one cache: every training once
    for count in (2, 3, 4):
        greedy = [shards.cost_of([cells[i] for i in s]) for s in shards.assign(cells, count)]
        round_robin = [shards.cost_of(cells[i::count]) for i in range(count)]
        # round-robin spreads every training over every shard, so each shard trains every model
        assert max(greedy) < max(round_robin), (count, greedy, round_robin)
        assert sum(greedy) == pytest.approx(total) and sum(round_robin) > total
        big = shards.cost_of([c for c in cells if c.model.label == "m0"])
        assert max(greedy) <= max(big, total / count) * 4 / 3  # within LPT's bound of the best split


def test_skipped_cells_cost_nothing_but_a_missing_provider_costs_as_if_it_ran(tmp_path):
    cells = build_cells(load_suite(write_suite(tmp_path / "s.yaml", MATRIX)), device="cuda")
    skipped = [c for c in cells if c.skip_reason]
    assert any(shards.is_free(c) for c in skipped)  # e.g. int8 on eager on CUDA: a declared capability
    assert shards.cost_of([c for c in cells if shards.is_free(c)]) == 0
    assert not any(shards.is_free(c) for c in cells if not c.skip_reason)


def test_suite_order_is_rebuilt_from_run_json(tmp_path):
    suite = load_suite(write_suite(tmp_path / "suite.yaml", MATRIX))
    cells = build_cells(suite)
    records = [json.loads(json.dumps(identity_record(c, 0, "cpu").to_json(), default=str)) for c in cells]
    resolved = json.loads(json.dumps(suite.resolved(), default=str))
    assert suite_order(resolved, records[::-1]) == [c.cell_id for c in cells]


# -- bench merge -----------------------------------------------------------------------------------------------

TWO_MODELS = tiny_suite(
    models=[{"name": "mlp", "hidden": [32]}, {"name": "mlp", "hidden": [16]}],
    measurement={"profile": "smoke", "batch_sizes": [1, 8], "memory": False, "threads": 1},  # fast on a busy machine
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A single run of TWO_MODELS, its two shards (shard 2 with a cache of its own) and an empty third of a 3-way
    split; returns the folder."""
    root = tmp_path_factory.mktemp("shards")
    suite = write_suite(root / "suite.yaml", TWO_MODELS)
    base = ["run", suite, "--no-progress", "--cache"]
    assert main_quiet([*base, root / "cache", "--out", root / "single"]) == 0
    assert main_quiet([*base, root / "cache", "--out", root / "s1", "--shard", "1/2"]) == 0
    assert main_quiet([*base, root / "cache2", "--out", root / "s2", "--shard", "2/2"]) == 0
    assert main_quiet([*base, root / "cache3", "--out", root / "empty", "--shard", "3/3"]) == 0
    return root


def main_quiet(args: list) -> int:
    from bench.cli import main

    return main([str(a) for a in args])


def records(run_dir: Path) -> list[dict]:
    return jsonl.read(run_dir / "cells.jsonl")


def test_merged_shards_equal_a_single_run(runs, tmp_path, capsys):
    assert {r["model"]["hidden"][0] for r in records(runs / "s1")} == {32}  # one training per shard
    assert {r["model"]["hidden"][0] for r in records(runs / "s2")} == {16}
    out = tmp_path / "merged"
    code, stdout, err = run_cli(["merge", runs / "s2", runs / "s1", "--out", out], capsys)
    assert code == 0, err
    assert "merged 2 shards" in stdout
    single, merged = records(runs / "single"), records(out)
    assert [r["cell_id"] for r in merged] == [r["cell_id"] for r in single]
    for a, b in zip(single, merged, strict=True):
        assert (b["status"], b["clean_accuracy"], b["robust_accuracy"], b["n_eval"]) == (
            a["status"],
            a["clean_accuracy"],
            a["robust_accuracy"],
            a["n_eval"],
        )
        assert b["latency_ms"]["1"]["p50"] > 0 and b["latency_ms"]["8"]["p50"] > 0
    meta, single_meta = (json.loads((d / "run.json").read_text()) for d in (out, runs / "single"))
    for key in ("n_cells", "counts", "invariants", "suite_hash", "seed", "status", "schema_version"):
        assert meta[key] == single_meta[key], key
    assert meta["shard"] is None
    assert [s["shard"] for s in meta["shards"]] == [[1, 2], [2, 2]]
    assert all(s["environment"]["hostname"] for s in meta["shards"])
    for name, key in (("stages.jsonl", "key"), ("timings.jsonl", "measure_key"), ("correctness.jsonl", "cell_id")):
        assert [line[key] for line in jsonl.read(out / name)] == [
            line[key] for line in jsonl.read(runs / "single" / name)
        ]
    assert jsonl.read(out / "correctness.jsonl") == jsonl.read(runs / "single" / "correctness.jsonl")
    assert (out / "report.html").stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no temporary folder left behind


def test_an_empty_shard_is_a_valid_run_directory(runs):
    meta = json.loads((runs / "empty" / "run.json").read_text())
    assert (meta["status"], meta["n_cells"], meta["shard"]) == ("complete", 0, [3, 3])
    assert records(runs / "empty") == [] and (runs / "empty" / "report.html").exists()


def test_merge_exits_1_when_a_cell_failed(runs, tmp_path, capsys):
    shutil.copytree(runs / "s1", tmp_path / "s1")
    lines = records(tmp_path / "s1")
    lines[0] |= {"status": "failed", "error": "Traceback: boom"}
    (tmp_path / "s1" / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    code, _, _ = run_cli(["merge", tmp_path / "s1", runs / "s2", "--out", tmp_path / "merged"], capsys)
    assert code == 1
    assert json.loads((tmp_path / "merged" / "run.json").read_text())["counts"]["failed"] == 1


def edited(runs: Path, tmp_path: Path, name: str, **changes) -> Path:
    """A copy of shard `name` whose run.json has `changes`."""
    copy = tmp_path / f"{name}-edited"
    shutil.copytree(runs / name, copy)
    meta = json.loads((copy / "run.json").read_text()) | changes
    (copy / "run.json").write_text(json.dumps(meta))
    return copy


REFUSALS = {
    "another suite": lambda r, t: ([r / "s1", edited(r, t, "s2", suite_hash="0" * 16)], "s2-edited"),
    "another seed": lambda r, t: ([r / "s1", edited(r, t, "s2", seed=7)], "s2-edited"),
    "a shard twice": lambda r, t: ([r / "s1", r / "s2", r / "s1"], "s1"),
    "overlapping shards": lambda r, t: ([r / "s1", edited(r, t, "s1", shard=[2, 2])], "s1-edited"),
    "a missing shard": lambda r, t: ([r / "s1"], "shard 2/2 missing"),
    "another split": lambda r, t: ([r / "s1", r / "s2", r / "empty"], "empty"),
    "not a run directory": lambda r, t: ([r / "s1", t], str(t)),
    "not a shard": lambda r, t: ([r / "s1", r / "single"], "single"),
    "an unfinished shard": lambda r, t: ([r / "s1", edited(r, t, "s2", status="running")], "s2-edited"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_merge_refuses_shards_that_are_not_one_run(runs, tmp_path, capsys, case):
    work = tmp_path / "work"
    work.mkdir()
    dirs, named = REFUSALS[case](runs, work)
    out = tmp_path / "merged"
    code, stdout, err = run_cli(["merge", *dirs, "--out", out], capsys)
    assert code == 2, (case, stdout, err)
    assert err.startswith("bench: error:") and err.count("\n") == 1 and named in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_merge_refuses_an_out_that_holds_a_run(runs, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in (runs / "single").iterdir()}
    code, _, err = run_cli(["merge", runs / "s1", runs / "s2", "--out", runs / "single"], capsys)
    assert code == 2 and "already holds a run" in err and err.count("\n") == 1
    assert {p.name: p.stat().st_mtime_ns for p in (runs / "single").iterdir()} == before
    assert not [p for p in runs.iterdir() if p.name.startswith(".")]
