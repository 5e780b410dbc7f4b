r"""Adversarial-training recipes: `fgsm_augment`, `fgsm_rs`, `pgd_at` and `trades` (Linf, inputs in [0, 1]).

- `fgsm_augment`: Goodfellow, Shlens and Szegedy, ICLR 2015 (arXiv:1412.6572), adversarial data augmentation:
  loss = (1 - alpha) * CE(f(x), y) + alpha * CE(f(x_fgsm), y).
- `fgsm_rs`: Wong, Rice and Kolter, "Fast is better than free", ICLR 2020 (arXiv:2001.03994): FGSM from a uniform
  random start in the eps-ball with step 1.25 * eps, plus a catastrophic-overfitting guard (`OverfitGuard`).
- `pgd_at`: Madry et al., ICLR 2018 (arXiv:1706.06083): CE on PGD inputs (random start, 2.5 * eps / steps step).
- `trades`: Zhang et al., ICML 2019 (arXiv:1901.08573): CE(f(x), y) + beta * KL(f(x) || f(x_adv)), x_adv found by
  PGD on the KL from x + 0.001 * N(0, 1).

Every recipe crafts its adversarial inputs on the current weights with the model in eval mode and takes the update
in train mode. Pang et al., "Bag of Tricks for Adversarial Training", ICLR 2021 (arXiv:2010.00467) find eval-mode
BatchNorm while crafting keeps robustness and raises clean accuracy; it also keeps the crafted batch from leaking
into BN running statistics and switches dropout off. For models without BN or dropout the two modes coincide.

Randomness: shuffling comes from `fit`'s generator, random starts from a second `torch.Generator` seeded with
`seed`, and the guard's subset and attack from their own seeded generators, so the same seed gives the same weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bench.attacks import ATTACKS, Attack
from bench.config import check_range
from bench.recipes import RECIPES
from bench.training import OptimConfig, TrainCost, fit
from bench.types import DataSplits

# --- configs -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class AdversarialConfig(OptimConfig):
    """Optimiser and schedule plus the training threat model: an Linf ball of radius eps in [0, 1] pixel space."""

    eps: float = 8 / 255  # the harness's default attack eps, so training and evaluation match out of the box

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("eps", self.eps, lo=0, hi=1)


@dataclasses.dataclass
class FGSMAugmentConfig(AdversarialConfig):
    eps: float = 0.1
    alpha: float = 0.5  # weight of the adversarial term; 0 is standard training, 1 trains on FGSM inputs only

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("alpha", self.alpha, lo=0, hi=1)


@dataclasses.dataclass
class FGSMRSConfig(AdversarialConfig):
    alpha: float | None = None  # FGSM step size; None: 1.25 * eps (Wong et al.)
    guard: bool = True  # catastrophic-overfitting guard: stop and restore the best epoch when robustness collapses
    guard_samples: int = 256  # fixed training subset the guard attacks after each epoch
    guard_steps: int = 5  # PGD steps of the guard's attack (step 2.5 * eps / steps, random start)
    guard_drop: float = 0.2  # collapse: robust accuracy more than this below the best epoch's
    guard_min_robust: float = 0.0  # collapse: robust accuracy below this after the best epoch reached it (0: off)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("alpha", self.alpha, lo=0)
        check_range("guard_samples", self.guard_samples, lo=1)
        check_range("guard_steps", self.guard_steps, lo=1)
        check_range("guard_drop", self.guard_drop, lo=0, hi=1)
        check_range("guard_min_robust", self.guard_min_robust, lo=0, hi=1)


@dataclasses.dataclass
class PGDATConfig(AdversarialConfig):
    steps: int = 7
    alpha: float | None = None  # PGD step size; None: 2.5 * eps / steps (Madry et al.)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("steps", self.steps, lo=1)
        check_range("alpha", self.alpha, lo=0)


@dataclasses.dataclass
class TRADESConfig(AdversarialConfig):
    steps: int = 5  # the paper uses 10 on CIFAR-10; 5 halves the cost
    alpha: float | None = None  # step size of the KL maximisation; None: 2.5 * eps / steps
    beta: float = 6.0  # weight of the robustness (KL) term; the paper's 1/lambda

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("steps", self.steps, lo=1)
        check_range("alpha", self.alpha, lo=0)
        check_range("beta", self.beta, lo=0)


# --- helpers -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with `model` in eval mode, then restore the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def make_attack(name: str, **params: Any) -> Attack:
    """The registered attack `name` with its config built from `params` (the attack axis is reached through its
    registry, never by importing another axis's plugin)."""
    entry = ATTACKS.get(name)
    return entry.obj(entry.config_cls(**params))


def _craft(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    with eval_mode(model):
        return attack.perturb(model, x, y, gen).detach()


def trades_perturb(
    model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int, generator: torch.Generator
) -> torch.Tensor:
    """TRADES' inner maximisation: PGD on KL(f(x) || f(x_adv)) from x + 0.001 * N(0, 1), in eval mode."""
    with eval_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_adv = x + 0.001 * noise
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


class OverfitGuard:
    """Catastrophic-overfitting guard for single-step training (Wong et al. 2020).

    After each epoch, `robust_accuracy` attacks a fixed training subset with PGD (the same attack noise every
    epoch, so epochs are comparable). The weights of the best epoch so far are kept; when robust accuracy falls more
    than `max_drop` below the best, or below `min_robust` after the best epoch reached it, the best weights are
    restored and the guard asks `fit` to stop.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, attack: Attack, *, max_drop: float, min_robust: float, seed: int
    ) -> None:
        self.x, self.y, self.attack = x, y, attack
        self.max_drop, self.min_robust, self.seed = max_drop, min_robust, seed
        self.history: list[float] = []
        self.best_epoch = 0
        self.best_robust = float("-inf")
        self.stopped_epoch: int | None = None
        self.seconds = 0.0
        self._best_state: dict[str, torch.Tensor] | None = None

    def robust_accuracy(self, model: nn.Module) -> float:
        with eval_mode(model):
            x_adv = self.attack.perturb(model, self.x, self.y, torch.Generator().manual_seed(self.seed))
            with torch.no_grad():
                correct = model(x_adv).argmax(1) == self.y
        return float(correct.float().mean())

    def update(self, epoch: int, model: nn.Module, robust: float) -> bool:
        """Record this epoch's robust accuracy; restore the best weights and return True on a collapse."""
        self.history.append(robust)
        if robust >= self.best_robust:  # ties go to the later epoch (same robustness, more training)
            self.best_robust, self.best_epoch = robust, epoch
            self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        collapsed = self.best_robust - robust > self.max_drop or robust < self.min_robust <= self.best_robust
        if collapsed and self._best_state is not None:
            model.load_state_dict(self._best_state)
            self.stopped_epoch = epoch
            return True
        return False

    def __call__(self, epoch: int, model: nn.Module) -> bool:
        start = time.perf_counter()
        stop = self.update(epoch, model, self.robust_accuracy(model))
        self.seconds += time.perf_counter() - start
        return stop

    def summary(self) -> dict[str, Any]:
        return {
            "stopped_early": self.stopped_epoch is not None,
            "stopped_epoch": self.stopped_epoch,
            "best_epoch": self.best_epoch,
            "guard_robust_accuracy": [round(r, 4) for r in self.history],
            "guard_seconds": round(self.seconds, 4),
        }


# --- recipes -------------------------------------------------------------------------------------------------------


@RECIPES.register("fgsm_augment", config=FGSMAugmentConfig)
def fgsm_augment(model: nn.Module, data: DataSplits, cfg: FGSMAugmentConfig, *, seed: int, device: str) -> TrainCost:
    """Adversarial data augmentation: (1 - alpha) * CE(clean) + alpha * CE(FGSM)."""
    attack, gen, a = make_attack("fgsm", eps=cfg.eps), torch.Generator().manual_seed(seed), cfg.alpha

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        terms = []  # a term with weight 0 is skipped, so alpha=0 costs what `standard` does
        if a < 1:
            terms.append((1 - a) * F.cross_entropy(model(x), y))
        if a > 0:
            terms.append(a * F.cross_entropy(model(_craft(attack, model, x, y, gen)), y))
        return torch.stack(terms).sum()

    return fit(model, data.x_train, data.y_train, cfg, seed=seed, device=device, loss_fn=loss_fn)


@RECIPES.register("fgsm_rs", config=FGSMRSConfig)
def fgsm_rs(model: nn.Module, data: DataSplits, cfg: FGSMRSConfig, *, seed: int, device: str) -> TrainCost:
    """Fast adversarial training: FGSM from a random start (Wong et al. 2020), with a catastrophic-overfitting guard."""
    step = cfg.alpha if cfg.alpha is not None else 1.25 * cfg.eps
    attack = make_attack("pgd", eps=cfg.eps, alpha=step, steps=1, random_start=True, early_stop=False)
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(_craft(attack, model, x, y, gen)), y)

    guard = None
    if cfg.guard:
        n = min(cfg.guard_samples, len(data.x_train))
        idx = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))[:n]
        guard = OverfitGuard(
            data.x_train[idx].to(device),
            data.y_train[idx].to(device),
            make_attack("pgd", eps=cfg.eps, steps=cfg.guard_steps),
            max_drop=cfg.guard_drop,
            min_robust=cfg.guard_min_robust,
            seed=seed,
        )
    cost = fit(model, data.x_train, data.y_train, cfg, seed=seed, device=device, loss_fn=loss_fn, on_epoch_end=guard)
    cost.extra = guard.summary() if guard is not None else {"stopped_early": False, "stopped_epoch": None}
    return cost


@RECIPES.register("pgd_at", config=PGDATConfig)
def pgd_at(model: nn.Module, data: DataSplits, cfg: PGDATConfig, *, seed: int, device: str) -> TrainCost:
    """PGD adversarial training (Madry et al. 2018): CE on PGD inputs with a random start."""
    attack = make_attack("pgd", eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, random_start=True, early_stop=False)
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(_craft(attack, model, x, y, gen)), y)

    return fit(model, data.x_train, data.y_train, cfg, seed=seed, device=device, loss_fn=loss_fn)


@RECIPES.register("trades", config=TRADESConfig)
def trades(model: nn.Module, data: DataSplits, cfg: TRADESConfig, *, seed: int, device: str) -> TrainCost:
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x) || f(x_adv)) / batch."""
    step = cfg.alpha if cfg.alpha is not None else 2.5 * cfg.eps / cfg.steps
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = trades_perturb(model, x, cfg.eps, step, cfg.steps, gen)
        logits = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="sum") / len(x)
        return F.cross_entropy(logits, y) + cfg.beta * robust

    return fit(model, data.x_train, data.y_train, cfg, seed=seed, device=device, loss_fn=loss_fn)
