"""The matrix: product minus exclude plus include (GitHub Actions semantics), stable ids, skip reasons."""

from __future__ import annotations

import pytest

from bench.errors import BenchInputError
from bench.matrix import build_cells, select_shard
from bench.suite import load_suite
from tests.conftest import run_cli, tiny_suite, write_suite

AXES = {
    "models": ["mlp", "simple_cnn"],
    "compressions": ["none", {"name": "prune", "ratio": [0.3, 0.5]}, "int8"],
    "runtimes": ["eager", "onnxruntime"],
    "attacks": ["none", "fgsm", "pgd"],
}


def make_suite(tmp_path, **extra):
    return load_suite(write_suite(tmp_path / "m.yaml", tiny_suite(**AXES, **extra)))


def test_product_count_and_ids(tmp_path):
    cells = build_cells(make_suite(tmp_path))
    assert len(cells) == 2 * 1 * 4 * 2 * 3
    assert len({c.cell_id for c in cells}) == len(cells)
    assert cells[0].cell_id == "mlp/standard/none/eager/none"
    assert "simple_cnn/standard/prune-0.5/onnxruntime/pgd" in {c.cell_id for c in cells}


def test_exclude_partial_match_by_name_and_label(tmp_path):
    suite = make_suite(
        tmp_path, exclude=[{"compression": "prune", "runtime": "onnxruntime"}, {"model": "mlp", "attack": "pgd"}]
    )
    ids = {c.cell_id for c in build_cells(suite)}
    # prune (both ratios) x onnxruntime removed: 2 models x 2 ratios x 3 attacks = 12
    # mlp x pgd removed: 4 compressions x 2 runtimes = 8, of which mlp/prune/onnxruntime/pgd (2) already gone
    assert len(ids) == 48 - 12 - 6
    assert not any("/prune-0.3/onnxruntime/" in i for i in ids)
    assert "mlp/standard/none/eager/pgd" not in ids


def test_exclude_with_parameters(tmp_path):
    suite = make_suite(tmp_path, exclude=[{"compression": {"name": "prune", "ratio": 0.3}}])
    ids = {c.cell_id for c in build_cells(suite)}
    assert len(ids) == 48 - 12
    assert not any("prune-0.3" in i for i in ids)
    assert any("prune-0.5" in i for i in ids)


def test_include_matching_an_existing_cell_adds_nothing(tmp_path):
    suite = make_suite(tmp_path, include=[{"model": "mlp", "runtime": "eager"}])
    assert len(build_cells(suite)) == 48


def test_include_adds_a_new_cell(tmp_path):
    new = {
        "model": "mlp",
        "recipe": "standard",
        "compression": {"name": "prune", "ratio": 0.7},
        "runtime": "eager",
        "attack": "none",
    }
    suite = make_suite(tmp_path, include=[new], exclude=[{"model": "mlp"}])
    ids = [c.cell_id for c in build_cells(suite)]
    assert len(ids) == 24 + 1
    assert ids[-1] == "mlp/standard/prune-0.7/eager/none"


def test_include_of_a_new_cell_must_name_every_axis(tmp_path):
    suite = make_suite(tmp_path, include=[{"model": "resnet18", "attack": "none"}])
    with pytest.raises(BenchInputError, match=r"missing: recipe, compression, runtime"):
        build_cells(suite)


def test_skip_reasons_come_from_capabilities(tmp_path):
    import onnxruntime as ort

    cells = build_cells(make_suite(tmp_path), device="cuda")
    eager_skips = [c for c in cells if c.skip_reason and c.runtime.name == "eager"]
    # eager runs no INT8 on CUDA (quantized kernels are CPU-only)
    assert {c.compression.name for c in eager_skips} == {"int8"}
    assert all("no int8 kernels on cuda" in c.skip_reason for c in eager_skips)
    ort_skips = [c for c in cells if c.skip_reason and c.runtime.name == "onnxruntime"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert len(ort_skips) == 24 and all("no CUDAExecutionProvider" in c.skip_reason for c in ort_skips)
    assert not any(c.skip_reason for c in build_cells(make_suite(tmp_path), device="cpu"))


def test_shards_partition_the_cells(tmp_path):
    cells = build_cells(make_suite(tmp_path))
    shards = [select_shard(cells, (i, 3)) for i in (1, 2, 3)]
    assert sorted(c.cell_id for s in shards for c in s) == sorted(c.cell_id for c in cells)


def test_bench_list_prints_cells_and_count(tmp_path, capsys):
    path = write_suite(tmp_path / "m.yaml", tiny_suite(**AXES))
    code, out, _ = run_cli(["list", path], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[-1] == "48 cells: 48 to run, 0 skipped"
    assert lines[-3:-1] == [
        "model mlp: normalize=true (dataset mean/std normalisation inside the model)",
        "model simple_cnn: normalize=true (dataset mean/std normalisation inside the model)",
    ]
    assert len(lines) == 48 + 2 + 1
