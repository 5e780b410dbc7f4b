"""Each compression really happens and is measured: pruning removes channels, sparsity zeroes weights, INT8 and
QAT leave quantized operators, FP16 halves the bytes, KD trains the named student, chains compose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bench.checks import budget_verdict
from bench.compressions import COMPRESSIONS, CompressContext, HalfSpec, QuantSpec
from bench.config import parse_config
from bench.datasets import load_dataset
from bench.inference import accuracy
from bench.runtimes import RUNTIMES
from tests.conftest import config_error, layer_paths, n_params, train_simple_cnn


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", None, 0)


@pytest.fixture(scope="module")
def trained(data):
    return train_simple_cnn(frozen=False)[0]


def apply(name, params, model, data):
    import copy

    entry = COMPRESSIONS.get(name)
    ctx = CompressContext(data, 0, "cpu", data.x_eval[:1])
    return entry.obj(copy.deepcopy(model), parse_config(entry.config_cls, params), ctx)


def export(runtime, compressed, data, tmp_path, **cfg):
    entry = RUNTIMES.get(runtime)
    rt = entry.obj(parse_config(entry.config_cls, cfg))
    ctx = CompressContext(data, 0, "cpu", data.x_eval[:2])
    exported = rt.export(compressed.model, compressed.lowering, ctx, tmp_path)
    return exported, rt.predictor(tmp_path, exported, "cpu", None)


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor"])
def test_prune_removes_channels_physically(trained, data, importance):
    out = apply("prune", {"ratio": 0.5, "importance": importance}, trained, data)
    assert out.meta["params_after"] < out.meta["params_before"] / 2.5
    assert out.meta["macs_after"] < out.meta["macs_before"] / 2.5
    assert n_params(out.model) == out.meta["params_after"]
    convs = [m for m in out.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 4  # width 8 -> 4: channels are gone, not masked
    assert out.model(data.x_eval[:3]).shape == (3, 10)  # classifier outputs protected


def test_prune_finetune_recovers_accuracy_and_records_cost(trained, data):
    plain = apply("prune", {"ratio": 0.5}, trained, data)
    tuned = apply("prune", {"ratio": 0.5, "finetune_epochs": 3}, trained, data)
    assert accuracy(tuned.model, data.x_eval, data.y_eval) > accuracy(plain.model, data.x_eval, data.y_eval)
    assert tuned.meta["finetune_epochs"] == 3 and tuned.meta["samples_seen"] == 3 * len(data.x_train)
    assert tuned.meta["finetune_s"] > 0


def test_global_pruning(trained, data):
    out = apply("prune", {"ratio": 0.5, "global_pruning": True}, trained, data)
    assert out.meta["params_after"] < out.meta["params_before"]


def test_unstructured_pruning_zeroes_weights_but_keeps_shapes(trained, data):
    out = apply("prune_unstructured", {"sparsity": 0.6}, trained, data)
    assert abs(out.meta["sparsity"] - 0.6) < 0.01
    assert out.meta["saves_latency"] is False
    assert n_params(out.model) == n_params(trained)  # dense tensors: same size on disk


def test_int8_static_onnx_has_qdq_and_is_smaller(trained, data, tmp_path):
    out = apply("int8", {"calibration_size": 50}, trained, data)
    assert isinstance(out.lowering, QuantSpec) and out.lowering.calibration_size == 50
    exported, predictor = export("onnxruntime", out, data, tmp_path, exporter="torchscript")
    meta = exported.meta
    assert meta["quantized_ops"] > 0 and meta["op_counts"]["QuantizeLinear"] > 0
    assert meta["calibration_samples"] == 50
    assert meta["size_ratio_to_fp32"] < 0.8
    assert predictor.module is None  # no input gradients: attacks must transfer
    assert accuracy(predictor, data.x_eval, data.y_eval) > accuracy(trained, data.x_eval, data.y_eval) - 0.05


def test_int8_dynamic_onnx_uses_integer_ops(trained, data, tmp_path):
    out = apply("int8", {"mode": "dynamic"}, trained, data)
    exported, _ = export("onnxruntime", out, data, tmp_path, exporter="torchscript")
    assert exported.meta["calibration_samples"] == 0
    assert any(op in exported.meta["op_counts"] for op in ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"))


@pytest.mark.parametrize(
    "mode, quantized_types",
    [
        ("static", (torch.nn.Conv2d, torch.nn.Linear)),  # FX static: convolutions (fused with ReLU) and linears
        ("dynamic", (torch.nn.Linear,)),  # dynamic quantization covers linear layers only
    ],
)
def test_int8_eager_names_quantized_layers(trained, data, tmp_path, mode, quantized_types):
    out = apply("int8", {"mode": mode}, trained, data)
    exported, predictor = export("eager", out, data, tmp_path)
    expected = layer_paths(trained, *quantized_types)
    assert expected == ({"net.0.0", "net.0.3", "net.0.6", "net.2", "net.4"} if mode == "static" else {"net.2", "net.4"})
    layers = exported.meta["quantized_layers"]
    # every named layer is one of the model's, by its module path; quantized linears may also list their
    # packed-weights holder (`<linear>._packed_params`), which is not a layer of its own
    assert {name for name in layers if not name.endswith("._packed_params")} == expected
    assert {name.removesuffix("._packed_params") for name in layers} <= expected
    assert accuracy(predictor, data.x_eval, data.y_eval) > 0.8


def test_fp16_onnx_halves_the_bytes_and_keeps_fp32_io(trained, data, tmp_path):
    out = apply("fp16", {}, trained, data)
    assert isinstance(out.lowering, HalfSpec)
    exported, predictor = export("onnxruntime", out, data, tmp_path, exporter="torchscript")
    assert 0.4 < exported.meta["size_ratio_to_fp32"] < 0.65
    session = ort.InferenceSession(str(Path(tmp_path) / exported.main_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    logits = session.run(None, {session.get_inputs()[0].name: data.x_eval[:4].numpy().astype(np.float32)})[0]
    assert logits.dtype == np.float32
    assert accuracy(predictor, data.x_eval, data.y_eval) > accuracy(trained, data.x_eval, data.y_eval) - 0.02


def test_fp16_is_skipped_on_cpu_eager_with_a_reason():
    assert "no fp16 kernels on cpu" in RUNTIMES.get("eager").obj.unsupported("fp16", "cpu")
    assert RUNTIMES.get("onnxruntime").obj.unsupported("fp16", "cpu") is None


def test_qat_fine_tunes_then_lowers_to_int8(trained, data, tmp_path):
    out = apply("qat", {"epochs": 1}, trained, data)
    assert out.meta["fake_quantized_layers"] == 5 and out.meta["finetune_epochs"] == 1
    assert isinstance(out.lowering, QuantSpec) and out.lowering.per_channel
    # weights left on the int8 grid: at most 255 distinct values per output channel
    conv = next(m for m in out.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(len(torch.unique(w)) <= 255 for w in conv.weight)
    exported, predictor = export("onnxruntime", out, data, tmp_path, exporter="torchscript")
    assert exported.meta["quantized_ops"] > 0
    assert accuracy(predictor, data.x_eval, data.y_eval) > 0.8


def test_kd_trains_the_named_smaller_student(trained, data):
    out = apply("kd", {"student": {"name": "mlp", "hidden": [32]}, "epochs": 5}, trained, data)
    assert out.meta["student"] == "mlp"
    assert out.meta["teacher_params"] == n_params(trained)
    assert out.meta["student_params"] == n_params(out.model) == 64 * 32 + 32 + 32 * 10 + 10  # the MLP named
    assert out.meta["student_params"] < out.meta["teacher_params"]  # smaller than the CNN it learns from
    assert isinstance(out.model.net[1], torch.nn.Linear)
    assert accuracy(out.model, data.x_eval, data.y_eval) > 0.8


def test_kd_rejects_an_unknown_student():
    error = config_error(COMPRESSIONS.get("kd").config_cls, {"student": "nope"})
    assert "unknown model 'nope'" in str(error) and error.field == "student"


def test_budget_verdict_recomputes_from_the_record():
    record = {"clean_accuracy": 0.945, "robust_accuracy": 0.30}
    verdict = budget_verdict(record, {"clean_accuracy": 0.95, "robust_accuracy": 0.40}, 0.99)
    assert verdict["clean_accuracy"]["kept"] is True  # 0.945 >= 0.99 * 0.95
    # 0.30 < 0.99 * 0.40, but without per-sample correctness no paired test can show the drop is real
    assert verdict["robust_accuracy"]["verdict"] == "inconclusive" and verdict["robust_accuracy"]["kept"] is None
    assert verdict["within_budget"] is True  # False only for a drop the test supports (tests/test_gates.py)
