"""`bench run --executor ray` on a two-node Ray cluster simulated on this machine (ray.cluster_utils.Cluster), the
second node with a cache directory of its own: no file is shared, so every artifact the other node needs, or
that the driver records, travels through Ray's object store and is checked on arrival."""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import pytest

from bench import jsonl
from bench.cli import main
from tests.conftest import records, tiny_suite, write_suite

ray = pytest.importorskip("ray", reason="the Ray executor's tests need Ray: pip install -e '.[ray]'")
cluster_utils = pytest.importorskip("ray.cluster_utils")

SUITE = tiny_suite(
    models=[{"name": "mlp", "hidden": [32]}, {"name": "mlp", "hidden": [16]}],  # two groups: one per node to measure
    compressions=["none", {"name": "prune", "ratio": 0.5}],
    runtimes=["eager", "onnxruntime"],
)


@pytest.fixture
def two_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    with monkeypatch.context() as env:  # only the second node's processes see it
        env.setenv("BENCH_NODE_CACHE", str(tmp_path / "node2-cache"))
        cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_nodes_with_separate_caches_give_the_local_records(two_nodes: Any, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", SUITE)
    for name, extra in (("local", []), ("ray", ["--executor", "ray"])):
        args = ["run", suite, "--out", tmp_path / name, "--cache", tmp_path / f"{name}-cache", "--no-progress"]
        assert main([str(a) for a in [*args, *extra]]) == 0
    local, remote = records(tmp_path / "local"), records(tmp_path / "ray")
    assert set(local) == set(remote) and len(remote) == 16
    for cell_id, record in remote.items():
        assert (record["clean_accuracy"], record["robust_accuracy"]) == (
            local[cell_id]["clean_accuracy"],
            local[cell_id]["robust_accuracy"],
        ), cell_id

    # both nodes measured (a measurement holds a whole node; groups take the nodes in turn)
    assert len({r["measurement"]["node"] for r in remote.values()}) == 2
    # the second node built or received stages in its own cache, and everything landed in the driver's cache
    node2 = tmp_path / "node2-cache"
    assert any(node2.glob("export/*/meta.json")), "the second node measured artifacts it received"
    driver = tmp_path / "ray-cache"
    for record in remote.values():
        for kind, key in record["stages"].items():
            assert (driver / kind / key / "meta.json").is_file(), (kind, key)
    built_on = collections.Counter(line.get("node") for line in jsonl.read(tmp_path / "ray" / "stages.jsonl"))
    assert len([n for n in built_on if n]) == 2, built_on  # stages built on both nodes, logged by the driver
    # what the driver received is byte-identical to what the node holds
    for meta in node2.glob("*/*/meta.json"):
        entry = meta.parent
        for file in entry.iterdir():
            twin = driver / entry.parent.name / entry.name / file.name
            assert twin.read_bytes() == file.read_bytes(), file
    assert os.environ.get("BENCH_NODE_CACHE") is None
