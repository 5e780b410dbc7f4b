"""APGD, Square, and the L2 / targeted variants of PGD and FGSM: against torchattacks, and their invariants."""

from __future__ import annotations

import pytest
import torch

from bench.attacks import ATTACKS, l2_norm
from bench.attacks import square as square_module
from bench.attacks.apgd import APGD, APGDConfig, checkpoints
from bench.attacks.fgsm import FGSM, FGSMConfig
from bench.attacks.pgd import PGD, PGDConfig
from bench.attacks.square import Square, SquareConfig, p_schedule
from bench.config import parse_config
from tests.conftest import config_error, eval_subset, robust_accuracy, seeded, train_simple_cnn
from tests.test_attacks import assert_textbook_pgd_or_stopped_early

torchattacks = pytest.importorskip("torchattacks")

N_EVAL = 200


# every test here runs on one intra-op thread (see tests.conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(one_thread):
    model, data = train_simple_cnn()
    return model, *eval_subset(model, data, N_EVAL)


# --- configs and registry -------------------------------------------------------------------------------------------


def test_registry_and_configs():
    assert ATTACKS.get("apgd").capabilities["kind"] == "gradient"
    assert ATTACKS.get("square").capabilities["kind"] == "query"  # needs no input gradients
    assert APGD(parse_config(APGDConfig, {"eps": 0.5, "norm": "L2"})).norm == "L2"
    assert PGD(PGDConfig()).norm == "Linf" and Square(SquareConfig()).norm == "Linf"
    for cls, params in [
        (APGDConfig, {"norm": "L1"}),
        (APGDConfig, {"steps": 0}),
        (APGDConfig, {"loss": "cw"}),
        (PGDConfig, {"norm": "l2"}),
        (SquareConfig, {"p_init": 0}),
        (SquareConfig, {"queries": 0}),
    ]:
        config_error(cls, params)


def test_apgd_checkpoints_and_square_schedule_follow_the_papers():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == []
    p = [p_schedule(0.8, i, 10000) for i in (0, 10, 11, 50, 51, 200, 201, 500, 501, 8000, 8001, 9999)]
    assert p == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1, 0.05, 0.8 / 256, 0.8 / 512, 0.8 / 512]
    assert p_schedule(0.8, 2, 1000) == 0.4  # rescaled to the budget


# --- APGD -----------------------------------------------------------------------------------------------------------


def test_apgd_matches_torchattacks_and_is_not_weaker_than_pgd(trained):
    model, x, y, clean = trained
    ours = robust_accuracy(model, APGD(APGDConfig(eps=0.1, steps=100)).perturb(model, x, y, seeded()), y, clean)
    ref_attack = torchattacks.APGD(model, norm="Linf", eps=0.1, steps=100, n_restarts=1, loss="ce", seed=0)
    ref = robust_accuracy(model, ref_attack(x, y), y, clean)
    pgd = robust_accuracy(model, PGD(PGDConfig(eps=0.1, steps=10)).perturb(model, x, y, seeded()), y, clean)
    assert abs(ours - ref) <= 0.015, (ours, ref)
    assert ours <= pgd + 0.01, (ours, pgd)
    assert ours < robust_accuracy(model, x, y, clean)


def test_apgd_l2_matches_torchattacks_and_stays_in_the_l2_ball(trained):
    model, x, y, clean = trained
    x_adv = APGD(APGDConfig(eps=0.5, steps=50, norm="L2")).perturb(model, x, y, seeded())
    assert l2_norm(x_adv - x).max() <= 0.5 + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    ref_attack = torchattacks.APGD(model, norm="L2", eps=0.5, steps=50, n_restarts=1, loss="ce", seed=0)
    ours, ref = robust_accuracy(model, x_adv, y, clean), robust_accuracy(model, ref_attack(x, y), y, clean)
    assert abs(ours - ref) <= 0.02, (ours, ref)


def test_apgd_more_steps_or_restarts_never_help_the_model(trained):
    model, x, y, clean = trained
    by_steps = [
        robust_accuracy(model, APGD(APGDConfig(eps=0.08, steps=s)).perturb(model, x, y, seeded(3)), y, clean)
        for s in (5, 25, 100)
    ]
    assert by_steps == sorted(by_steps, reverse=True), by_steps
    by_restarts = [
        robust_accuracy(
            model, APGD(APGDConfig(eps=0.08, steps=5, restarts=r)).perturb(model, x, y, seeded(3)), y, clean
        )
        for r in (1, 3)
    ]
    assert by_restarts[1] <= by_restarts[0], by_restarts


def test_apgd_dlr_loss_attacks(trained):
    model, x, y, clean = trained
    x_adv = APGD(APGDConfig(eps=0.1, steps=20, loss="dlr")).perturb(model, x, y, seeded())
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert robust_accuracy(model, x_adv, y, clean) < robust_accuracy(model, x, y, clean) - 0.3


# --- PGD and FGSM: L2 and targeted -------------------------------------------------------------------------------


def test_pgd_l2_without_random_start_matches_torchattacks(trained):
    model, x, y, _ = trained
    ours = PGD(PGDConfig(eps=0.5, alpha=0.1, steps=10, random_start=False, norm="L2")).perturb(model, x, y, seeded())
    ref = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=10, random_start=False)(x, y)
    assert_textbook_pgd_or_stopped_early(model, x, ours, ref, lambda logits: logits.argmax(1) != y)


def test_targeted_pgd_matches_torchattacks_least_likely_and_hits_the_target(trained):
    model, x, y, _ = trained
    ours = PGD(PGDConfig(eps=0.1, alpha=0.02, steps=10, random_start=False, targeted=True)).perturb(
        model, x, y, seeded()
    )
    ref_attack = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=10, random_start=False)
    ref_attack.set_mode_targeted_least_likely()
    with torch.no_grad():
        target = model(x).argmin(1)
    # a targeted run stops once a sample reaches its target
    assert_textbook_pgd_or_stopped_early(model, x, ours, ref_attack(x, y), lambda logits: logits.argmax(1) == target)
    for norm, eps in (("Linf", 0.5), ("L2", 3.0)):
        x_adv = PGD(PGDConfig(eps=eps, steps=20, norm=norm, targeted=True)).perturb(model, x, y, seeded())
        with torch.no_grad():
            hit_rate = float((model(x_adv).argmax(1) == target).float().mean())
        assert hit_rate > 0.9, (norm, hit_rate)  # chance is 0.1


def test_fgsm_l2_steps_along_the_normalised_gradient(trained):
    model, x, y, clean = trained
    x_adv = FGSM(FGSMConfig(eps=1.0, norm="L2")).perturb(model, x, y, seeded())
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x_in), y, reduction="sum"), x_in)
    expected = (x + grad / l2_norm(grad).clamp_min(1e-10).view(-1, 1, 1, 1)).clamp(0, 1)
    assert (x_adv - expected).abs().max() < 1e-5
    assert robust_accuracy(model, x_adv, y, clean) < robust_accuracy(model, x, y, clean)


def _l2_attacks(eps):
    return [
        FGSM(FGSMConfig(eps=eps, norm="L2")),
        PGD(PGDConfig(eps=eps, steps=5, norm="L2")),
        PGD(PGDConfig(eps=eps, steps=5, norm="L2", targeted=True, restarts=2)),
        APGD(APGDConfig(eps=eps, steps=10, norm="L2")),
    ]


def _linf_attacks(eps):
    return [
        FGSM(FGSMConfig(eps=eps)),
        PGD(PGDConfig(eps=eps, steps=5, targeted=True)),
        APGD(APGDConfig(eps=eps, steps=10)),
        APGD(APGDConfig(eps=eps, steps=10, loss="dlr", restarts=2)),
        Square(SquareConfig(eps=eps, queries=50)),
    ]


def test_perturbations_stay_in_their_ball_and_in_pixel_range(trained):
    model, x, y, _ = trained
    for attack in _l2_attacks(1.5):
        x_adv = attack.perturb(model, x, y, seeded())
        assert l2_norm(x_adv - x).max() <= 1.5 + 1e-5, type(attack).__name__
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    for attack in _linf_attacks(0.2):
        x_adv = attack.perturb(model, x, y, seeded())
        assert (x_adv - x).abs().max() <= 0.2 + 1e-6, type(attack).__name__
        assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_eps_zero_returns_x_unchanged(trained):
    model, x, y, _ = trained
    for attack in _l2_attacks(0.0) + _linf_attacks(0.0):
        assert torch.equal(attack.perturb(model, x, y, seeded()), x), type(attack).__name__


def test_same_seed_same_result(trained):
    model, x, y, _ = trained
    for attack in (
        PGD(PGDConfig(eps=0.5, steps=3, norm="L2", restarts=2)),
        APGD(APGDConfig(eps=0.08, steps=10, restarts=2)),
        Square(SquareConfig(eps=0.1, queries=30)),
    ):
        first, again = (attack.perturb(model, x, y, seeded(7)) for _ in range(2))
        assert torch.equal(first, again), type(attack).__name__
        assert not torch.equal(first, attack.perturb(model, x, y, seeded(8))), type(attack).__name__


# --- Square ---------------------------------------------------------------------------------------------------------


def test_square_matches_torchattacks_with_its_window_offsets(trained, monkeypatch):
    model, x, y, clean = trained
    ref = robust_accuracy(
        model, torchattacks.Square(model, eps=0.15, n_queries=300, p_init=0.8, seed=0)(x, y), y, clean
    )
    ours = robust_accuracy(model, Square(SquareConfig(eps=0.15, queries=300)).perturb(model, x, y, seeded()), y, clean)
    assert ours <= ref + 0.01, (ours, ref)  # all window positions: at least as strong
    # torchattacks (like the authors' code) never puts the window against the bottom or right edge
    monkeypatch.setattr(
        square_module,
        "window_corners",
        lambda n, side, s, generator: torch.randint(0, max(side - s, 1), (n,), generator=generator),
    )
    same_offsets = robust_accuracy(
        model, Square(SquareConfig(eps=0.15, queries=300)).perturb(model, x, y, seeded()), y, clean
    )
    assert abs(same_offsets - ref) <= 0.03, (same_offsets, ref)


def test_square_is_black_box_and_counts_its_queries(trained):
    model, x, y, clean = trained
    grad_modes = []

    def predictor(batch):  # a deployed artifact without input gradients (e.g. ONNX Runtime behind tensors)
        grad_modes.append(torch.is_grad_enabled())
        with torch.no_grad():
            return model(batch).detach()

    attack = Square(SquareConfig(eps=0.1, queries=100))
    x_adv = attack.perturb(predictor, x, y, seeded())
    assert grad_modes and not any(grad_modes)
    assert torch.equal(x_adv, Square(SquareConfig(eps=0.1, queries=100)).perturb(model, x, y, seeded()))
    used = attack.last_queries
    assert used.shape == (len(x),) and used.dtype == torch.int64
    assert int(used.min()) >= 1 and int(used.max()) <= 100
    with torch.no_grad():
        broken = model(x_adv).argmax(1) != y
    assert bool((used[~broken] == 100).all())  # unbroken samples spent the whole budget
    assert float(used[broken & clean].float().mean()) < 100  # broken ones stopped early
    assert len(grad_modes) <= 100  # one batched query per iteration


def test_square_with_a_small_budget_is_not_stronger_than_white_box_pgd(trained):
    model, x, y, clean = trained
    square = robust_accuracy(model, Square(SquareConfig(eps=0.1, queries=100)).perturb(model, x, y, seeded()), y, clean)
    pgd = robust_accuracy(model, PGD(PGDConfig(eps=0.1, steps=10)).perturb(model, x, y, seeded()), y, clean)
    assert square >= pgd - 0.03, (square, pgd)
    assert square < robust_accuracy(model, x, y, clean)
