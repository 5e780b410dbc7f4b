"""Every runtime end to end in the default test run: one tiny suite through `bench run` (in-process), one cell per
runtime (eager, torchscript, torch_compile with inductor on CPU, ONNX Runtime with the default torch.export-based
exporter and with the TorchScript exporter) plus one INT8 eager cell. Each cell must be ok, leave an artifact in
its runtime's format that loads and reproduces the recorded accuracy, agree with eager when it runs FP32, and carry
a latency at both batch sizes.

Measured at 29-42 s on a shared 2-core CPU (about 30 s with a warm inductor cache, up to 42 s cold): most of it is
the measuring processes' start-up and torch.compile's first call."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import bench
from tests.conftest import build_registered_model, layer_paths, run_suite_for_module, tiny_suite

EVAL_SIZE = 60
BATCHES = {"1", "8"}
HIDDEN = [16]
SUITE = tiny_suite(
    name="runtimes",
    dataset={"name": "digits", "eval_size": EVAL_SIZE, "calibration_size": 16},
    models=[{"name": "mlp", "hidden": HIDDEN}],
    recipes=[{"name": "standard", "epochs": 2}],
    compressions=["none"],
    runtimes=[
        "eager",
        "torchscript",
        "torch_compile",
        "onnxruntime",  # the quick start's: exporter dynamo (torch.onnx.export's torch.export-based path)
        {"name": "onnxruntime", "exporter": "torchscript"},
    ],
    attacks=["none"],
    # one thread: with two on two busy cores, spin-waiting made calls of this tiny model 10-20 ms (0.06 ms with one)
    measurement={"profile": "smoke", "batch_sizes": [1, 8], "threads": 1},
    include=[{"model": "mlp", "recipe": "standard", "compression": "int8", "runtime": "eager", "attack": "none"}],
)
PREFIX = "mlp/standard"
# runtime label -> (artifact format, main file suffix)
FP32 = {
    "eager": ("torch", ".pt"),
    "torchscript": ("torchscript", ".ts"),
    "torch_compile": ("torch", ".pt"),  # the pickled module; compiled by the process that loads it
    "onnxruntime": ("onnx", ".onnx"),
    "onnxruntime-exporter=torchscript": ("onnx", ".onnx"),
}
INT8_EAGER = f"{PREFIX}/int8/eager/none"  # quantized FX modules are saved through TorchScript


def cell(runtime: str) -> str:
    return f"{PREFIX}/none/{runtime}/none"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root, records = run_suite_for_module(tmp_path_factory, SUITE, "runtimes")  # exit code 0 or an error here
    return records, root / "run"


def test_every_runtime_runs_ok(run):
    records, _ = run
    assert set(records) == {cell(runtime) for runtime in FP32} | {INT8_EAGER}
    assert all(r["status"] == "ok" for r in records.values())
    assert {r["runtime"]["name"] for r in records.values()} == {"eager", "torchscript", "torch_compile", "onnxruntime"}
    assert records[cell("onnxruntime")]["runtime"]["exporter"] == "dynamo"  # the default
    assert records[cell("onnxruntime-exporter=torchscript")]["runtime"]["exporter"] == "torchscript"
    for runtime in ("onnxruntime", "onnxruntime-exporter=torchscript"):  # both exporters: checked, dynamic batch
        check = records[cell(runtime)]["checks"]["onnx: checker, dynamic batch"]
        assert check["ok"] and "onnx.checker passed" in check["detail"], check


def test_an_onnx_file_the_checker_rejects_fails_with_its_message(tmp_path):
    from bench.runtimes.onnxruntime import check_onnx

    model = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    model.ir_version = 0  # not a valid IR version
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(RuntimeError, match=r"the ONNX checker rejects bad\.onnx"):
        check_onnx(tmp_path / "bad.onnx")


def _load_and_predict(fmt: str, path: str):
    """Load an artifact as a user would for its format; returns a function from inputs to logits."""
    if fmt == "onnx":
        onnx.checker.check_model(path)  # a valid ONNX file (with its external weights, when the exporter wrote any)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy().astype(np.float32)})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        module = torch.jit.load(path) if fmt == "torchscript" else torch.load(path, weights_only=False)
    if fmt == "torchscript":
        assert isinstance(module, torch.jit.ScriptModule)
    else:
        assert isinstance(module, torch.nn.Module) and not isinstance(module, torch.jit.ScriptModule)
    return lambda x: module.eval()(x)


def test_each_artifact_is_in_its_runtimes_format_and_reproduces_the_accuracy(run):
    records, run_dir = run
    loaded = bench.load_run(run_dir)
    expected = {cell(runtime): spec for runtime, spec in FP32.items()} | {INT8_EAGER: ("torchscript", ".ts")}
    for cell_id, (fmt, suffix) in expected.items():
        artifact = records[cell_id]["artifact"]
        assert artifact["format"] == fmt, cell_id
        assert artifact["path"].endswith(suffix), (cell_id, artifact["path"])
        predict = _load_and_predict(fmt, artifact["path"])
        x, y = loaded.eval_data(cell_id)
        assert len(y) == EVAL_SIZE
        with torch.no_grad():
            accuracy = int((predict(x).argmax(1) == y).sum()) / len(y)
        assert math.isclose(accuracy, records[cell_id]["clean_accuracy"], abs_tol=1e-9), cell_id
    # the two ONNX exporters wrote two different files
    onnx_shas = {records[cell(r)]["artifact"]["sha256"] for r in ("onnxruntime", "onnxruntime-exporter=torchscript")}
    assert len(onnx_shas) == 2


def test_fp32_runtimes_agree_with_eager(run):
    records, _ = run
    eager = records[cell("eager")]
    assert eager["clean_accuracy"] > 0.8  # a trained model: agreement with a constant predictor would prove nothing
    for runtime in FP32:
        r = records[cell(runtime)]
        assert r["n_eval"] == EVAL_SIZE
        assert r["clean_accuracy"] == eager["clean_accuracy"], runtime  # same samples, same predictions
        assert r["agreement"]["top1_agreement"] == 1.0, runtime
        assert r["agreement"]["max_abs_logit_diff"] < 1e-4, runtime
        assert r["lowering"] is None


def test_int8_eager_quantizes_the_models_linear_layers(run):
    records, _ = run
    r = records[INT8_EAGER]
    linears = layer_paths(build_registered_model("mlp", {"hidden": HIDDEN}), torch.nn.Linear)
    assert linears == {"net.1", "net.3"}
    layers = r["lowering"]["quantized_layers"]
    # by module path; a quantized linear may also list its packed-weights holder (`<linear>._packed_params`)
    assert {name for name in layers if not name.endswith("._packed_params")} == linears
    assert {name.removesuffix("._packed_params") for name in layers} <= linears
    assert r["clean_accuracy"] >= records[cell("eager")]["clean_accuracy"] - 0.05


def test_latency_at_both_batch_sizes_and_compile_cost_held_apart(run):
    records, _ = run
    for cell_id, r in records.items():
        assert set(r["latency_ms"]) == BATCHES, cell_id
        for batch, stats in r["latency_ms"].items():
            assert stats["p50"] > 0 and stats["n"] >= 5, (cell_id, batch)
        assert r["throughput_sps"] > 0 and r["measurement"]["threads"] == 1
    compiled = records[cell("torch_compile")]["measurement"]
    # inductor compiles at the first call: that cost is in first_call_ms, not in the steady-state percentiles
    p50 = records[cell("torch_compile")]["latency_ms"]["1"]["p50"]
    assert compiled["first_call_ms"] > 50 * p50
    assert compiled["first_call_ms"] > 10 * records[cell("eager")]["measurement"]["first_call_ms"]


def test_the_fp16_artifact_is_valid_onnx(tmp_path):
    """ONNX Runtime's float16 converter appends the input casts after the nodes that read them; the harness puts
    the nodes back in topological order, so the checker accepts the file and it gives the FP32 file's outputs."""
    from bench.runtimes.onnxruntime import check_onnx, convert_fp16, export_onnx

    model = build_registered_model("simple_cnn", {"width": 4, "hidden": 8}).eval()
    x = torch.rand(3, 1, 8, 8)
    export_onnx(model, x[:1], tmp_path / "fp32.onnx", "torchscript", 13)
    convert_fp16(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx")
    assert check_onnx(tmp_path / "fp16.onnx") == {"onnx_checker": "passed", "batch_dim": "batch"}
    outputs = []
    for name in ("fp32.onnx", "fp16.onnx"):
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"input": x.numpy()})[0])
    assert np.allclose(outputs[0], outputs[1], atol=1e-2)
