"""Benchmarks, run with `pytest --benchmark` (skipped otherwise): timings are compared side by side in one run,
never asserted in the default test run.

- group `pgd`: this harness's PGD against torchattacks' PGD, same model, data and settings.
- group `latency-eager` / `latency-onnxruntime`: the harness's measured session call against a bare loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.attacks.pgd import PGD, PGDConfig
from bench.config import parse_config
from bench.datasets import load_dataset
from bench.models import MODELS, build_model
from tests.conftest import train_simple_cnn


@pytest.fixture(scope="module")
def trained():
    return train_simple_cnn(epochs=5, width=32, hidden=128)


@pytest.mark.benchmark(group="pgd")
def test_pgd_this_harness(benchmark, trained):
    model, data = trained
    attack = PGD(PGDConfig(eps=0.1, alpha=0.025, steps=10))
    benchmark(lambda: attack.perturb(model, data.x_eval, data.y_eval, torch.Generator().manual_seed(0)))


@pytest.mark.benchmark(group="pgd")
def test_pgd_torchattacks(benchmark, trained):
    torchattacks = pytest.importorskip("torchattacks")
    model, data = trained
    attack = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=10, random_start=True)
    benchmark(lambda: attack(data.x_eval, data.y_eval))


@pytest.fixture(scope="module")
def onnx_file(trained, tmp_path_factory):
    from bench.runtimes.onnxruntime import export_onnx

    model, data = trained
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, data.x_eval[:2], path, "torchscript", 18)
    return path


@pytest.mark.benchmark(group="latency-onnxruntime")
def test_latency_harness_session_onnxruntime(benchmark, onnx_file):
    from bench.measure.sessions import open_session

    session = open_session("bench.runtimes.ort_session:open_onnx", onnx_file, "cpu", torch.get_num_threads())
    x = session.prepare(np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32))
    benchmark(lambda: session.run(x))


@pytest.mark.benchmark(group="latency-onnxruntime")
def test_latency_bare_session_run(benchmark, onnx_file):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    benchmark(lambda: session.run(None, {"input": x}))


@pytest.mark.benchmark(group="latency-eager")
def test_latency_harness_session_eager(benchmark, trained, tmp_path):
    from bench.measure.sessions import open_session

    model, _ = trained
    torch.save(model, tmp_path / "model.pt")
    opener = "bench.runtimes.torch_session:open_pickled_module"
    session = open_session(opener, tmp_path / "model.pt", "cpu", torch.get_num_threads())
    x = session.prepare(np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32))
    benchmark(lambda: session.run(x))


@pytest.mark.benchmark(group="latency-eager")
def test_latency_bare_inference_mode(benchmark, trained):
    model, _ = trained
    x = torch.rand(64, 1, 8, 8)

    def run():
        with torch.inference_mode():
            return model(x)

    benchmark(run)


def _fresh_cnn(data):
    """An untrained simple_cnn with seeded weights: both training benchmarks start from the same model."""
    torch.manual_seed(0)
    cfg = parse_config(MODELS.get("simple_cnn").config_cls, {})
    return build_model("simple_cnn", cfg, data.num_classes, data.in_shape, data.mean, data.std)


@pytest.mark.benchmark(group="training")
def test_training_standard_recipe(benchmark):
    from bench.recipes.standard import StandardConfig, standard

    data = load_dataset("digits", None, 0)

    def train():
        model = _fresh_cnn(data)
        standard(model, data, StandardConfig(epochs=2, batch_size=64, lr=0.05), seed=0, device="cpu")

    benchmark.pedantic(train, rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="training")
def test_training_bare_pytorch_loop(benchmark):
    data = load_dataset("digits", None, 0)

    def train():
        model = _fresh_cnn(data)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
        generator = torch.Generator().manual_seed(0)
        for _ in range(2):
            order = torch.randperm(len(data.x_train), generator=generator)
            for i in range(0, len(order), 64):
                idx = order[i : i + 64]
                loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    benchmark.pedantic(train, rounds=3, warmup_rounds=1)
