"""Benchmarks, run with `pytest --benchmark` (skipped otherwise): timings are compared side by side in one run,
never asserted in the default test run.

- group `pgd`: the harness's whole attack stage of a PGD-10 cell against torchattacks' PGD-10 (no random start),
  same model and samples; group `apgd`: APGD-CE 100 against the authors' APGD (pyautoattack); group `eps-sweep`:
  a five-point PGD-10 eps sweep chained against the same five eps from scratch and against one eps.
- group `latency-eager` / `latency-onnxruntime`: the harness's measured session call against a bare loop.
- group `measure-overhead`: one artifact's measurement process forked warm from a zygote against a new interpreter
  (`overhead_s_median` in the extra info: its wall time beyond the timed calls).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bench.attacks.apgd import APGD, APGDConfig
from bench.attacks.pgd import PGD, PGDConfig
from bench.config import parse_config
from bench.datasets import load_dataset
from bench.models import MODELS, build_model
from tests.conftest import train_simple_cnn


@pytest.fixture(scope="module")
def trained():
    return train_simple_cnn(epochs=5, width=32, hidden=128)


def _attack_stage(model, data, attack):
    """The harness's whole attack stage of an eager cell (bench.evaluate: clean-correct samples only, early stop,
    the gradient check from the first step, scoring on the deployed predictor, the eps-ball and range checks)."""
    from bench.evaluate import _attack
    from bench.inference import predict
    from bench.runtimes import Predictor
    from bench.threat_models import attack_members

    predictor = Predictor(lambda b: model(b), model)
    clean = predict(predictor, data.x_eval).argmax(1) == data.y_eval
    (member,) = attack_members(attack, "attack")
    return lambda: _attack(member, predictor, model, None, data, clean, 256, 0, "cpu")


@pytest.mark.benchmark(group="pgd")
def test_pgd_this_harness(benchmark, trained):
    """The default suite's PGD-10 cell (eps 0.1, random start) as the harness runs it."""
    model, data = trained
    benchmark(_attack_stage(model, data, PGD(PGDConfig(eps=0.1, steps=10))))


@pytest.mark.benchmark(group="pgd")
def test_pgd_torchattacks(benchmark, trained):
    torchattacks = pytest.importorskip("torchattacks")
    model, data = trained
    attack = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=10, random_start=False)
    benchmark(lambda: attack(data.x_eval, data.y_eval))


@pytest.mark.benchmark(group="apgd")
def test_apgd_this_harness(benchmark, trained):
    model, data = trained
    benchmark.pedantic(_attack_stage(model, data, APGD(APGDConfig(eps=0.1, steps=100))), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="apgd")
def test_apgd_authors_code(benchmark, trained):
    """Croce and Hein's own APGD (fra31/auto-attack; on PyPI as pyautoattack, the same autopgd_base.py)."""
    autopgd = pytest.importorskip("pyautoattack.autopgd_base")
    model, data = trained
    attack = autopgd.APGDAttack(model, n_iter=100, norm="Linf", n_restarts=1, eps=0.1, loss="ce", seed=0, device="cpu")
    benchmark.pedantic(lambda: attack.perturb(data.x_eval, data.y_eval), rounds=5, warmup_rounds=1)


SWEEP = (0.02, 0.05, 0.1, 0.2, 0.3)


def _evaluate_at(model, data, eps, previous=None):
    from bench.evaluate import evaluate
    from bench.runtimes import Predictor

    attack = PGD(PGDConfig(eps=eps, steps=10))
    predictor = Predictor(lambda b: model(b), model)
    return evaluate(predictor, model, attack, data, batch_size=256, seed=0, device="cpu", previous=previous)


@pytest.mark.benchmark(group="eps-sweep")
def test_eps_sweep_five_points_chained(benchmark, trained):
    """Five evaluations of PGD-10, each continuing the next-smaller eps (as an eps sweep's evaluate stages do)."""
    model, data = trained

    def sweep():
        previous = None
        for eps in SWEEP:
            result = _evaluate_at(model, data, eps, previous)
            previous = result["sweep_state"] | {"robust_correct": result["per_sample"]["robust_correct"]}

    benchmark.pedantic(sweep, rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="eps-sweep")
def test_eps_sweep_five_points_from_scratch(benchmark, trained):
    model, data = trained
    benchmark.pedantic(lambda: [_evaluate_at(model, data, eps) for eps in SWEEP], rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="eps-sweep")
def test_eps_sweep_one_point(benchmark, trained):
    """One eps (0.1) from scratch: the unit of the sweep's cost."""
    model, data = trained
    benchmark.pedantic(lambda: _evaluate_at(model, data, 0.1), rounds=5, warmup_rounds=1)


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


@pytest.fixture(scope="module")
def artifacts(trained, onnx_file, tmp_path_factory):
    """The trained CNN as the eager runtime's artifact and as the ONNX one, with their openers."""
    model, _ = trained
    path = tmp_path_factory.mktemp("eager") / "model.pt"
    torch.save(model, path)
    return {
        "eager": ("bench.runtimes.torch_session:open_pickled_module", path),
        "onnxruntime": ("bench.runtimes.ort_session:open_onnx", onnx_file),
    }


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
@pytest.mark.parametrize("how", ["zygote", "subprocess"])
@pytest.mark.benchmark(group="measure-overhead")
def test_measure_one_artifact(benchmark, artifacts, runtime, how):
    """One measurement process of one artifact (smoke profile, batch sizes 1 and 32), forked warm from a zygote or
    started as a new interpreter. `overhead_s` in the extra info: the wall time minus the timed calls."""
    import dataclasses

    from bench.measure.latency import PROFILES
    from bench.measure.schedule import run_worker, start_zygotes

    opener, path = artifacts[runtime]
    spec = {
        "session": opener,
        "path": str(path),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "batch_sizes": [1, 32],
        "input_shape": [1, 8, 8],
        "seed": 0,
        "memory": True,
        "options": {},
        "sha256": None,
        "profile": dataclasses.asdict(PROFILES["smoke"]),
    }
    if how == "zygote":
        start_zygotes([spec], spec["threads"])  # started once per run, before any artifact: not timed here
    overheads = []

    def measure():
        start = time.perf_counter()
        result = run_worker(spec, spec["threads"], how=how)
        timed = sum(sum(v) for v in result["samples_ms"].values()) / 1e3
        overheads.append(time.perf_counter() - start - timed)

    benchmark.pedantic(measure, rounds=5, warmup_rounds=1)
    benchmark.extra_info["overhead_s_median"] = sorted(overheads)[len(overheads) // 2]


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
