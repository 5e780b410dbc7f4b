"""The model's own share of the memory (`model_memory_mb`): the measuring process's peak RSS over the RSS of the
same runtime brought up with no model, beside the process's peak (`peak_memory_mb`), in the record and the report.

Memory figures are not timings, but RSS still moves with the allocator, lazily touched code pages and what the
runtime initialises on first use; the bounds below are deliberately loose and say why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.measure.sessions import Session, warm_runtime, warms_up
from tests.conftest import run_suite, run_suite_for_module, tiny_suite

# A Linear-heavy MLP on digits (64 inputs): 64x4096 + 4096x4096 + 4096x10 weights and their biases, about 17.1
# million float32 parameters, 65 MB.
WIDE_HIDDEN = [4096, 4096]
WIDE_WEIGHT_MB = (64 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10) * 4 / 2**20
ORT = {"name": "onnxruntime", "exporter": "torchscript"}  # the quicker exporter; the session is the same

SUITE = tiny_suite(
    dataset={"name": "digits", "eval_size": 60, "calibration_size": 16},
    models=["simple_cnn", {"name": "mlp", "hidden": WIDE_HIDDEN}],
    recipes=["none"],  # untrained weights weigh the same, and nothing is trained
    runtimes=["eager", ORT],
    attacks=["none"],
    measurement={"profile": "smoke", "batch_sizes": [1, 8], "memory": True},
)
CNN = "simple_cnn/none/none/{}/none"
WIDE = "mlp/none/none/{}/none"
ORT_LABEL = "onnxruntime"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return run_suite_for_module(tmp_path_factory, SUITE, "memory_share")


def _record(records: dict[str, Any], pattern: str, runtime: str) -> dict[str, Any]:
    cell_id = pattern.format(runtime)
    matches = [r for cid, r in records.items() if cid == cell_id]
    assert matches, (cell_id, sorted(records))
    return matches[0]


def test_small_cnn_model_share_is_a_few_mb_while_the_process_peak_is_torch(run):
    _, records = run
    eager = _record(records, CNN, "eager")
    # The process peak of an eager PyTorch worker is ~550 MB here, nearly all of it `import torch`.
    assert eager["peak_memory_mb"] > 200
    # The 90k-parameter CNN itself: 0.35 MB of weights; measured 7-12 MB on eager (first-use kernel code pages, the
    # unpickling, small allocator arenas) and ~3 MB on ONNX Runtime. 20 MB leaves room for allocator noise and still
    # fails a baseline taken before the runtime was up (that would put hundreds of MB here on eager).
    assert 0 <= eager["model_memory_mb"] < 20
    ort = _record(records, CNN, ORT_LABEL)
    assert 0 <= ort["model_memory_mb"] < 20
    for record in (eager, ort):
        # the share is the peak while loading and running over the RSS with the runtime up (the record's
        # baseline): at most the process peak (which also covers the warm-up) minus that baseline
        baseline = record["measurement"]["baseline_rss_mb"]
        assert record["model_memory_mb"] <= record["peak_memory_mb"] - baseline + 0.01


@pytest.mark.parametrize("runtime", ["eager", ORT_LABEL])
def test_large_model_share_is_at_least_about_its_weights(run, runtime):
    _, records = run
    wide = _record(records, WIDE, runtime)
    share = wide["model_memory_mb"]
    # Loading the weights must show up. Measured: eager 77 MB (1.2x the 65 MB of weights), ONNX Runtime 132 MB (2.0x:
    # the peak is during the load, which holds the file's bytes and the initializers at once; 69 MB while running).
    # The lower bound, 0.8x, allows for pages the allocator reuses from the warm-up; the upper bound, 2.5x + 50 MB,
    # leaves room for such load-time copies and still fails a baseline taken without the runtime up (+500 MB for
    # torch).
    assert 0.8 * WIDE_WEIGHT_MB < share < 2.5 * WIDE_WEIGHT_MB + 50, (runtime, share, WIDE_WEIGHT_MB)
    assert wide["peak_memory_mb"] > share
    small = _record(records, CNN, runtime)
    assert share > small["model_memory_mb"] + 0.5 * WIDE_WEIGHT_MB


def test_both_figures_in_the_record_and_the_report(run):
    root, records = run
    lines = [json.loads(line) for line in (root / "run" / "cells.jsonl").read_text().splitlines()]
    keys = list(lines[0])
    assert keys.index("model_memory_mb") == keys.index("peak_memory_mb") + 1
    assert all(isinstance(r["model_memory_mb"], float) for r in lines if r["status"] == "ok")
    stages = [json.loads(line) for line in (root / "run" / "stages.jsonl").read_text().splitlines()]
    measure = next(s for s in stages if s["kind"] == "measure")
    meta = json.loads((root / "cache" / "measure" / measure["key"] / "meta.json").read_text())
    result = meta["result"]
    assert result["model_memory_mb"] >= 0 and result["runtime_warmup_s"] > 0
    assert result["process_start_rss_mb"] <= result["baseline_rss_mb"] <= result["peak_rss_mb"]
    html = (root / "run" / "report.html").read_text(encoding="utf-8")
    assert "peak mem (MB)" in html and "model mem (MB)" in html
    # the tables are JSON the page's script draws (bench.report.grids): values to 4 significant digits
    for record in records.values():
        for key in ("peak_memory_mb", "model_memory_mb"):
            assert f"{float(f'{record[key]:.4g}')!r}" in html, key


def test_onnx_worker_path_imports_no_torch(run):
    """The ONNX warm-up (a session over a weightless Identity graph) and the session stay free of PyTorch, so the
    ONNX figures are those of an ONNX Runtime deployment."""
    _, records = run
    artifact = _record(records, WIDE, ORT_LABEL)["artifact"]["path"]
    code = (
        "import sys; from pathlib import Path; import numpy as np;"
        "from bench.measure.sessions import open_session, warm_runtime;"
        "opener = 'bench.runtimes.ort_session:open_onnx';"
        "warm = warm_runtime(opener, 'cpu', 1, {'graph_optimization': 'basic'});"
        "assert warm.settings['graph_optimization'] == 'basic', warm.settings;"
        "s = open_session(opener, Path(sys.argv[1]), 'cpu', 1, {});"
        "s.run(s.prepare(np.zeros((2, 1, 8, 8), np.float32)));"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    out = subprocess.run([sys.executable, "-c", code, artifact], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]


def test_identity_model_bytes_are_what_onnx_builds():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from bench.runtimes.ort_session import IDENTITY_MODEL

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, ir_version=7, opset_imports=[helper.make_opsetid("", 13)], producer_name="")
    onnx.checker.check_model(model)
    assert model.SerializeToString() == IDENTITY_MODEL


# An opener of a runtime plugin that says nothing about warming up, and one that does.
WARMED: list[tuple[str, int | None, dict[str, Any]]] = []


def plain_opener(path: Path, device: str, threads: int | None, options: dict[str, Any]) -> Session:
    raise NotImplementedError


def _warm(device: str, threads: int | None, options: dict[str, Any]) -> str:
    WARMED.append((device, threads, options))
    return "held"


@warms_up(_warm)
def warmed_opener(path: Path, device: str, threads: int | None, options: dict[str, Any]) -> Session:
    raise NotImplementedError


def test_runtime_warm_up_is_the_openers_and_defaults_to_its_import():
    assert warm_runtime(f"{__name__}:plain_opener") is None  # by default: the import of the opener's module alone
    assert warm_runtime(f"{__name__}:warmed_opener", "cpu", 3, {"a": 1}) == "held"
    assert WARMED == [("cpu", 3, {"a": 1})]
    from bench.runtimes import ort_session, torch_session

    for opener in (torch_session.open_pickled_module, torch_session.open_torchscript, ort_session.open_onnx):
        assert callable(getattr(opener, "warm_up", None)), opener


@pytest.mark.gpu
def test_cuda_model_share_of_gpu_memory(tmp_path):
    data = tiny_suite(
        device="cuda",
        models=[{"name": "mlp", "hidden": WIDE_HIDDEN}],
        recipes=["none"],
        runtimes=["eager"],
        attacks=["none"],
    )
    code, records = run_suite(tmp_path, data)
    assert code == 0, [r.get("error") for r in records.values()]
    (record,) = records.values()
    measurement = record["measurement"]
    # the weights live on the GPU: the allocation over the runtime's (CUDA context and cuBLAS up, no model) is at
    # least about their bytes, and never more than the pass's peak allocation
    assert 0.8 * WIDE_WEIGHT_MB < measurement["model_gpu_mb"] <= measurement["peak_gpu_mb"]
