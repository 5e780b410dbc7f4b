"""Attacks against reference implementations (torchattacks) on the same model and data, and their invariants."""

from __future__ import annotations

import pytest
import torch

from bench.attacks.fgsm import FGSM, FGSMConfig
from bench.attacks.pgd import PGD, PGDConfig
from bench.evaluate import evaluate
from bench.runtimes import Predictor
from tests.conftest import eval_subset, robust_accuracy, seeded, train_simple_cnn

torchattacks = pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def trained():
    return train_simple_cnn()


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
    x, y, clean = eval_subset(model, data)
    torch.manual_seed(0)
    ref_attack = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=10, random_start=True)
    ref = robust_accuracy(model, ref_attack(x, y), y, clean)
    ours = robust_accuracy(model, PGD(PGDConfig(eps=0.1, steps=10)).perturb(model, x, y, seeded(0)), y, clean)
    assert abs(ours - ref) <= 0.01, (ours, ref)


def test_pgd_stays_in_the_ball_and_restarts_never_help_the_model(trained):
    model, data = trained
    x, y, clean = eval_subset(model, data)
    one = PGD(PGDConfig(eps=0.08, steps=5)).perturb(model, x, y, seeded(1))
    three = PGD(PGDConfig(eps=0.08, steps=5, restarts=3)).perturb(model, x, y, seeded(1))
    for x_adv in (one, three):
        assert (x_adv - x).abs().max() <= 0.08 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert robust_accuracy(model, three, y, clean) <= robust_accuracy(model, one, y, clean)


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
    # strictly falling: an undefended model loses accuracy at every eps > 0, most of it by eps 0.2
    assert robust[0] > robust[1] > robust[2] > robust[3]
    assert robust[2] < results[2]["clean_accuracy"] / 2
    assert robust[-1] == 0.0  # an unbounded attack breaks every sample
    assert all(r["threat_model"] == "white-box" for r in results)
    assert all(c["ok"] for r in results for c in r["checks"].values())


def test_pgd_is_at_least_as_strong_as_fgsm_at_the_same_eps(trained):
    model, data = trained
    predictor = Predictor(lambda b: model(b), model)
    n = len(data.y_eval)
    for eps in (0.05, 0.1):
        fgsm, pgd = (
            evaluate(predictor, model, attack, data, batch_size=128, seed=0, device="cpu")["robust_accuracy"]
            for attack in (FGSM(FGSMConfig(eps=eps)), PGD(PGDConfig(eps=eps, steps=10)))
        )
        assert pgd <= fgsm + 1 / n, (eps, pgd, fgsm)  # iterating FGSM's step never helps the model (one sample slack)


def test_no_gradients_means_transfer_from_the_float_twin(trained):
    model, data = trained
    deployed = Predictor(lambda b: model(b), module=None)  # e.g. ONNX Runtime: no input gradients
    result = evaluate(deployed, model, FGSM(FGSMConfig(eps=0.1)), data, batch_size=128, seed=0, device="cpu")
    assert result["threat_model"] == "transfer"
    assert result["surrogate"] == "float eager twin"
    assert result["robust_accuracy"] < result["clean_accuracy"]
    # the deployed model computes what its float twin does, so the transferred examples are the white-box ones
    white_box = evaluate(
        Predictor(lambda b: model(b), model),
        model,
        FGSM(FGSMConfig(eps=0.1)),
        data,
        batch_size=128,
        seed=0,
        device="cpu",
    )
    assert white_box["threat_model"] == "white-box"
    assert result["robust_accuracy"] == white_box["robust_accuracy"]
