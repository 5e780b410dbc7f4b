"""Attacks against reference implementations (torchattacks) on the same model and data, and their invariants."""

from __future__ import annotations

import pytest
import torch

from bench.attacks.fgsm import FGSM, FGSMConfig
from bench.attacks.pgd import PGD, PGDConfig
from bench.evaluate import evaluate
from bench.runtimes import Predictor
from tests.helpers import train_simple_cnn

torchattacks = pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def trained():
    return train_simple_cnn()


def _robust(model, x_adv, y, clean_correct):
    with torch.no_grad():
        return int(((model(x_adv).argmax(1) == y) & clean_correct).sum()) / len(y)


def test_fgsm_matches_torchattacks(trained):
    model, data = trained
    x, y = data.x_eval, data.y_eval
    ours = FGSM(FGSMConfig(eps=0.1)).perturb(model, x, y, torch.Generator())
    ref = torchattacks.FGSM(model, eps=0.1)(x, y)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_pgd_without_random_start_matches_torchattacks(trained):
    model, data = trained
    x, y = data.x_eval, data.y_eval
    cfg = PGDConfig(eps=0.1, alpha=0.02, steps=10, random_start=False)
    ours = PGD(cfg).perturb(model, x, y, torch.Generator())
    ref = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=10, random_start=False)(x, y)
    assert (ours - ref).abs().max() < 1e-5


def test_pgd_robust_accuracy_within_one_point_of_torchattacks(trained):
    model, data = trained
    x, y = data.x_eval, data.y_eval
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    torch.manual_seed(0)
    ref = _robust(model, torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=10, random_start=True)(x, y), y, clean)
    ours = _robust(
        model, PGD(PGDConfig(eps=0.1, steps=10)).perturb(model, x, y, torch.Generator().manual_seed(0)), y, clean
    )
    assert abs(ours - ref) <= 0.01, (ours, ref)


def test_pgd_stays_in_the_ball_and_restarts_never_help_the_model(trained):
    model, data = trained
    x, y = data.x_eval, data.y_eval
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    one = PGD(PGDConfig(eps=0.08, steps=5)).perturb(model, x, y, torch.Generator().manual_seed(1))
    three = PGD(PGDConfig(eps=0.08, steps=5, restarts=3)).perturb(model, x, y, torch.Generator().manual_seed(1))
    for x_adv in (one, three):
        assert (x_adv - x).abs().max() <= 0.08 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert _robust(model, three, y, clean) <= _robust(model, one, y, clean)


def test_eps_zero_gives_clean_accuracy_and_robust_falls_with_eps(trained):
    model, data = trained
    predictor = Predictor(lambda b: model(b), model)
    results = [
        evaluate(predictor, model, PGD(PGDConfig(eps=eps, steps=5)), data, batch_size=128, seed=0, device="cpu")
        for eps in (0.0, 0.05, 0.2, 1.0)
    ]
    assert results[0]["robust_accuracy"] == results[0]["clean_accuracy"]
    robust = [r["robust_accuracy"] for r in results]
    assert robust == sorted(robust, reverse=True)
    assert robust[-1] == 0.0  # an unbounded attack breaks every sample
    assert all(r["threat_model"] == "white-box" for r in results)
    assert all(c["ok"] for r in results for c in r["checks"].values())


def test_no_gradients_means_transfer_from_the_float_twin(trained):
    model, data = trained
    deployed = Predictor(lambda b: model(b), module=None)  # e.g. ONNX Runtime: no input gradients
    result = evaluate(deployed, model, FGSM(FGSMConfig(eps=0.1)), data, batch_size=128, seed=0, device="cpu")
    assert result["threat_model"] == "transfer"
    assert result["surrogate"] == "float eager twin"
    assert result["robust_accuracy"] < result["clean_accuracy"]
