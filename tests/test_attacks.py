"""Attacks against reference implementations (torchattacks) on the same model and data, and their invariants."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from bench.attacks.apgd import APGD, APGDConfig
from bench.attacks.fgsm import FGSM, FGSMConfig
from bench.attacks.pgd import PGD, PGDConfig
from bench.evaluate import evaluate
from bench.inference import rate
from bench.runtimes import Predictor
from tests.conftest import correct, eval_subset, robust_accuracy, seeded, train_simple_cnn

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


def assert_textbook_pgd_or_stopped_early(model, x, ours, ref, broken):
    """`ours` is the textbook PGD (`ref`, torchattacks') on every sample it leaves unbroken, and wherever the two
    differ it is adversarial already (`broken(logits)`): it stopped at the first adversarial point it found."""
    with torch.no_grad():
        ours_broken, ref_broken = broken(model(ours)), broken(model(ref))
    same = (ours - ref).flatten(1).abs().amax(1) < 1e-5
    assert bool(ours_broken[~same].all())  # every difference is an earlier adversarial point
    assert bool(same[~ours_broken].all())  # every unbroken sample took the textbook path
    assert bool((ours_broken | ~ref_broken).all())  # nothing the reference breaks survives
    assert bool((same & ~ours_broken).any())  # some samples survive both: the paths are compared


def test_pgd_without_random_start_matches_torchattacks(trained):
    model, data = trained
    x, y = data.x_eval, data.y_eval
    cfg = PGDConfig(eps=0.1, alpha=0.02, steps=10, random_start=False)
    ours = PGD(cfg).perturb(model, x, y, torch.Generator())
    ref = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=10, random_start=False)(x, y)
    assert_textbook_pgd_or_stopped_early(model, x, ours, ref, lambda logits: logits.argmax(1) != y)
    assert not torch.equal(ours, ref)  # some samples stopped early here


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


@pytest.mark.parametrize(
    "make", [lambda **k: PGD(PGDConfig(eps=0.1, steps=10, **k)), lambda **k: APGD(APGDConfig(eps=0.1, steps=20))]
)
def test_a_transfer_attack_runs_every_step_on_every_sample(trained, make):
    """Crafted on a surrogate, a point that barely fools the surrogate often does not fool the deployed model: the
    harness turns the early stop off (`stop_early`), so the attack keeps strengthening every sample."""
    model, data = trained
    x, y = data.x_eval[:128], data.y_eval[:128]
    deployed = Predictor(lambda b: model(b), module=None)
    attack = make()
    result = evaluate(deployed, model, attack, data, batch_size=128, seed=0, device="cpu")
    assert result["threat_model"] == "transfer" and attack.stop_early is False
    white = make()
    evaluate(Predictor(lambda b: model(b), model), model, white, data, batch_size=128, seed=0, device="cpu")
    assert white.stop_early is True  # judged by the model it is scored on: the first adversarial point counts
    # with the stop off, no sample leaves the batch: the textbook loop (PGD: early_stop false) on every sample
    if isinstance(attack, PGD):
        attack.stop_early = False
        full = make(early_stop=False)
        same = [a.perturb(model, x, y, torch.Generator().manual_seed(0)) for a in (attack, full)]
        assert torch.equal(*same)
    else:
        attack.stop_early = False
        x_adv = attack.perturb(model, x, y, torch.Generator().manual_seed(0))
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(model(x_adv), y, reduction="none")
        attack.stop_early = True
        x_first = attack.perturb(model, x, y, torch.Generator().manual_seed(0))
        with torch.no_grad():
            first_loss = torch.nn.functional.cross_entropy(model(x_first), y, reduction="none")
        assert loss.mean() > first_loss.mean()  # the highest-loss points, not the first misclassified ones


# --- the harness's attack stage against the reference libraries, at equal or greater strength ----------------------


def test_harness_pgd_cell_is_at_least_as_strong_as_torchattacks(trained):
    """The eager PGD-10 cell (evaluate: clean-correct samples only, early stop, the gradient check folded into the
    first step) leaves no more samples robust than torchattacks' PGD-10 without random start, + 0.5 points; without
    random start it breaks every sample torchattacks breaks."""
    model, data = trained
    predictor = Predictor(lambda b: model(b), model)
    y = data.y_eval
    ref_adv = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=10, random_start=False)(data.x_eval, y)
    clean = correct(model, data.x_eval, y)
    ref_robust = correct(model, ref_adv, y) & clean
    for random_start in (True, False):
        attack = PGD(PGDConfig(eps=0.1, steps=10, random_start=random_start))
        result = evaluate(predictor, model, attack, data, batch_size=128, seed=0, device="cpu")
        assert result["robust_accuracy"] <= rate(ref_robust) + 0.005, (random_start, result["robust_accuracy"])
        assert all(c["ok"] for c in result["checks"].values()), result["checks"]
    robust = result["per_sample"]["robust_correct"]  # without random start: a superset of torchattacks' broken
    assert not bool((robust & ~ref_robust).any())


def test_harness_apgd_is_within_one_point_of_the_authors_code(trained):
    """APGD-CE 100 through the harness against the authors' APGD (fra31/auto-attack, packaged as pyautoattack)."""
    autopgd = pytest.importorskip("pyautoattack.autopgd_base")
    model, data = trained
    x, y = data.x_eval[:200], data.y_eval[:200]
    subset = dataclasses.replace(data, x_eval=x, y_eval=y)
    ours = evaluate(
        Predictor(lambda b: model(b), model),
        model,
        APGD(APGDConfig(eps=0.1)),
        subset,
        batch_size=256,
        seed=0,
        device="cpu",
    )
    ref_attack = autopgd.APGDAttack(model, n_iter=100, norm="Linf", n_restarts=1, eps=0.1, loss="ce", seed=0)
    ref = robust_accuracy(model, ref_attack.perturb(x, y), y, correct(model, x, y))
    assert abs(ours["robust_accuracy"] - ref) <= 0.01, (ours["robust_accuracy"], ref)


def test_gradient_attacks_leave_their_first_step_zero_gradient_flags(trained):
    model, data = trained
    x, y = data.x_eval[:50], data.y_eval[:50]
    for attack in (PGD(PGDConfig(eps=0.1, steps=3)), APGD(APGDConfig(eps=0.1, steps=3)), FGSM(FGSMConfig(eps=0.1))):
        attack.perturb(model, x, y, seeded())
        assert attack.last_zero_gradient is not None and len(attack.last_zero_gradient) == 50
        assert not bool(attack.last_zero_gradient.any())  # a trained CNN has gradients everywhere
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.nn.init.zeros_(flat[1].weight)  # constant logits: every input gradient is zero
    attack = PGD(PGDConfig(eps=0.1, steps=2))
    attack.perturb(flat, x, y, seeded())
    assert bool(attack.last_zero_gradient.all())


# --- eps sweeps ---------------------------------------------------------------------------------------------------

SWEEP = (0.02, 0.05, 0.1, 0.2, 0.3)


def _sweep(predictor, model, data, make, eps_values=SWEEP):
    """evaluate() at each eps, each continuing the previous one (as chained evaluate stages do)."""
    results, previous = [], None
    for eps in eps_values:
        result = evaluate(predictor, model, make(eps), data, batch_size=128, seed=0, device="cpu", previous=previous)
        previous = result["sweep_state"] | {"robust_correct": result["per_sample"]["robust_correct"]}
        results.append(result)
    return results


@pytest.mark.parametrize(
    "make",
    [
        lambda eps: PGD(PGDConfig(eps=eps, steps=10)),
        lambda eps: APGD(APGDConfig(eps=eps, steps=20)),
        lambda eps: FGSM(FGSMConfig(eps=eps)),
    ],
    ids=["pgd", "apgd", "fgsm"],
)
def test_eps_sweep_is_no_weaker_than_each_eps_from_scratch(trained, make):
    model, data = trained
    predictor = Predictor(lambda b: model(b), model)
    swept = _sweep(predictor, model, data, make)
    scratch = [evaluate(predictor, model, make(eps), data, batch_size=128, seed=0, device="cpu") for eps in SWEEP]
    for eps, s, f in zip(SWEEP, swept, scratch, strict=True):
        assert s["robust_accuracy"] <= f["robust_accuracy"], (eps, s["robust_accuracy"], f["robust_accuracy"])
        assert s["clean_accuracy"] == f["clean_accuracy"]
        assert all(c["ok"] for c in s["checks"].values()), (eps, s["checks"])
    flags = [s["per_sample"]["robust_correct"] for s in swept]
    for smaller, larger in itertools.pairwise(flags):
        assert not bool((larger & ~smaller).any())  # broken at a smaller eps: broken at every larger one
    assert [s.get("sweep", {}).get("from_eps") for s in swept] == [None, *SWEEP[:-1]]
    starts = swept[0]["sweep_state"]["starts"]["deployed model"]
    assert torch.equal(starts["index"], flags[0].nonzero().flatten())  # the survivors' adversarial points
    assert float(starts["delta"].float().abs().max()) <= SWEEP[0] + 1e-3
    warm = swept[1]["sweep"]["warm_start"]
    assert warm is (not isinstance(make(0.1), FGSM))  # FGSM starts at x by definition


def test_eps_sweep_on_a_transfer_target_warm_starts_each_surrogate(trained):
    model, data = trained
    deployed = Predictor(lambda b: model(b), module=None)  # no gradients: crafted on the float twin
    swept = _sweep(deployed, model, data, lambda eps: PGD(PGDConfig(eps=eps, steps=5)), SWEEP[:3])
    assert all(s["threat_model"] == "transfer" for s in swept)
    assert swept[1]["sweep"]["warm_start"] and set(swept[1]["sweep_state"]["starts"]) == {"float eager twin"}
    scratch = evaluate(
        deployed, model, PGD(PGDConfig(eps=SWEEP[2], steps=5)), data, batch_size=128, seed=0, device="cpu"
    )
    assert swept[2]["robust_accuracy"] <= scratch["robust_accuracy"]


def test_a_sweep_continues_one_attack_from_a_smaller_eps(trained):
    model, data = trained
    predictor = Predictor(lambda b: model(b), model)
    first = evaluate(predictor, model, PGD(PGDConfig(eps=0.2, steps=2)), data, batch_size=128, seed=0, device="cpu")
    previous = first["sweep_state"] | {"robust_correct": first["per_sample"]["robust_correct"]}
    with pytest.raises(ValueError, match="smaller eps"):
        evaluate(
            predictor,
            model,
            PGD(PGDConfig(eps=0.1, steps=2)),
            data,
            batch_size=128,
            seed=0,
            device="cpu",
            previous=previous,
        )
