"""Fuzz: mutated copies of the shipped suites never crash `bench list`.

Each case parses one of suites/*.yaml, applies one to three random mutations (delete a key or an item, swap a
value's type, an out-of-range number or a NaN / inf string, an unknown name or key, a name that exists but does
not fit there, an empty list or mapping), writes it and runs `bench list` in-process. Whatever the mutation, the
command must end with exit code 0 or 2, never an uncaught exception or a traceback, and an exit 2 must print
exactly one line naming the suite file. Seeded: a failure names the suite, the seed and the mutations, and
reproduces.

`bench list` runs the preflight checks (bench.preflight), which load each dataset and build each model; to keep the
test well under a minute, dataset loads and successful model checks are memoised across cases (both are pure
functions of their inputs). Failing checks are never memoised.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import random
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import preflight
from bench.cli import main

SUITES = sorted(Path(__file__).resolve().parent.parent.glob("suites/*.yaml"))
CASES = 400  # mutated suites, spread over the shipped suites in turn
BATCHES = 8  # test functions the cases are split into (a failure shows its batch's failures only)
SEED = 20261123

HUGE = [10**9, 10**12, 2**62, 10**30]
OUT_OF_RANGE = [-1, 0, -0.5, 1.5, 1e300, *HUGE, "nan", "NaN", "inf", "-inf", ".nan", math.nan, math.inf]
OTHER_TYPES = ["x", 7, 0.25, True, None, [], {}, [1, "a"], {"a": 1}, {"name": 3}]
UNKNOWN_NAMES = ["no_such_plugin", "resnet9000", "package.module:function", "tests.nope:thing", "", " ", "NONE"]
# names that exist, on another axis or where they do not fit: they get past parsing to the preflight checks
OTHER_NAMES = ["synthetic", "mnist", "cifar10", "squeezenet1_0", "mobilenet_v3_small", "mlp", "simple_cnn", "pgd",
               "apgd", "square", "kd", "int8", "L2", "Linf", "tests.conftest:broken_net",
               "tests.conftest:tiny_net"]  # fmt: skip


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a parsed YAML tree, the root excluded."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


def _node(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _parent(tree: Any, path: tuple) -> Any:
    return _node(tree, path[:-1])


def _mutate(tree: dict[str, Any], rng: random.Random) -> str:
    """Apply one random mutation to `tree` in place; return what it did, for the failure message."""
    paths = _paths(tree)
    leaves = [p for p in paths if not isinstance(_parent(tree, p)[p[-1]], (dict, list))]
    path = rng.choice(leaves if leaves and rng.random() < 0.7 else paths)  # mostly a value, sometimes a section
    parent, key = _parent(tree, path), path[-1]
    value = parent[key]
    kind = rng.choice(["delete", "type", "range", "name", "empty", "unknown_key", "numbers"])
    if kind == "delete":
        del parent[key]
        return f"delete {path}"
    if kind == "type":
        parent[key] = copy.deepcopy(rng.choice(OTHER_TYPES))
    elif kind == "range" or (kind == "numbers" and not isinstance(value, (int, float))):
        parent[key] = rng.choice(OUT_OF_RANGE)
    elif kind == "numbers":  # nudge a number: negative, zero, a fraction, huge
        parent[key] = rng.choice([-value, 0, value / 3, value * 10**9, value + 0.5])
    elif kind == "name":
        names = [p for p in paths if p[-1] == "name"]
        path = rng.choice(names) if names else path
        parent, key = _parent(tree, path), path[-1]
        parent[key] = rng.choice(UNKNOWN_NAMES + OTHER_NAMES)
    elif kind == "empty":
        parent[key] = rng.choice([[], {}, "", [[]], [{}]])
    else:  # an unknown key in the nearest mapping along the path (the value itself when it is one)
        mappings = [_node(tree, path[:depth]) for depth in range(len(path) + 1)]
        [m for m in mappings if isinstance(m, dict)][-1]["no_such_key"] = 1
        return f"unknown key near {path}"
    return f"{kind} {path} -> {parent[key]!r}"


def _cases() -> list[tuple[Path, int]]:
    return [(SUITES[i % len(SUITES)], SEED + i) for i in range(CASES)]


@pytest.fixture(scope="module", autouse=True)
def memoised_checks() -> Any:
    """Memoise dataset loads and successful model checks across cases (see the module's docstring)."""
    load, check = preflight.load_dataset, preflight._check_model
    loaded: dict[tuple[str, str, int], Any] = {}
    passed: set[tuple[Any, ...]] = set()

    def load_dataset(name: str, config: Any = None, seed: int = 0) -> Any:
        key = (name, repr(config), seed)
        if key not in loaded:
            loaded[key] = load(name, config, seed)
        return loaded[key]

    def check_model(suite: Any, name: str, config: Any, data: Any, field: str) -> None:
        key = (name, repr(config), data.name, tuple(data.in_shape), data.num_classes)
        if key not in passed:
            check(suite, name, config, data, field)
            passed.add(key)

    preflight.load_dataset, preflight._check_model = load_dataset, check_model
    yield
    preflight.load_dataset, preflight._check_model = load, check


def test_shipped_suites_list_cleanly(capsys):
    for suite in SUITES:
        code = main(["list", str(suite)])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "Traceback" not in out + err


@pytest.mark.parametrize("batch", range(BATCHES))
def test_mutated_suites_exit_0_or_2_with_one_line(batch, tmp_path):
    failures = []
    for suite, seed in _cases()[batch::BATCHES]:
        rng = random.Random(seed)
        tree = yaml.safe_load(suite.read_text())
        done = [_mutate(tree, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        path = tmp_path / f"{suite.stem}-{seed}.yaml"
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["list", str(path)])
        except SystemExit as exc:  # argparse; not expected for `bench list FILE`, but not a crash either
            code = exc.code
        except Exception:
            failures.append(f"{suite.name} seed {seed} {done}: uncaught\n{traceback.format_exc()}")
            continue
        text = out.getvalue() + err.getvalue()
        lines = err.getvalue().strip().splitlines()
        if "Traceback" in text or code not in (0, 2):
            failures.append(f"{suite.name} seed {seed} {done}: exit {code}\n{text[-2000:]}")
        elif code == 2 and (len(lines) != 1 or not lines[0].startswith(f"bench: error: {path}")):
            failures.append(f"{suite.name} seed {seed} {done}: exit 2 but stderr is\n{err.getvalue()}")
    assert not failures, "\n\n".join(failures)
