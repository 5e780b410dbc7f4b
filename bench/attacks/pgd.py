r"""PGD: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018 (arXiv:1706.06083). Distance measure: Linf (the paper's), or L2.

Start at a random point of the eps-ball (random_start), take `steps` steepest-ascent steps of size `alpha` on the
cross-entropy, project back onto the eps-ball and [0, 1] after each. Linf steps along sign(grad) and starts
uniformly in the cube; L2 steps along grad / ||grad||_2 (per sample), projects onto the L2 ball and starts at a
uniform direction with a radius uniform in [0, eps] (as torchattacks.PGDL2). With `restarts` > 1 a sample counts
as broken if any restart breaks it (per-sample worst case); only samples still unbroken are attacked again.
The default step size 2.5 * eps / steps is Madry et al.'s rule.

`targeted`: the target of each sample is its least-likely class under the clean logits (argmin, a deterministic
choice) and each step descends the cross-entropy to it; a restart counts as successful when the prediction is
the target. The harness still scores robust accuracy as prediction == true label.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from bench.attacks import ATTACKS, Attack, LinfConfig, input_gradient, project, random_start, steepest_step
from bench.config import check_range


@dataclasses.dataclass
class PGDConfig(LinfConfig):
    alpha: float | None = None  # step size; None: 2.5 * eps / steps
    steps: int = 10
    random_start: bool = True
    restarts: int = 1
    norm: Literal["Linf", "L2"] = "Linf"
    targeted: bool = False  # toward the least-likely clean class

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("alpha", self.alpha, lo=0)
        check_range("steps", self.steps, lo=1)
        check_range("restarts", self.restarts, lo=1)


@ATTACKS.register("pgd", config=PGDConfig, kind="gradient", primary="eps")
class PGD(Attack):
    """Projected Gradient Descent under Linf or L2, with random start, restarts and an optional target."""

    @property
    def alpha(self) -> float:
        return self.cfg.alpha if self.cfg.alpha is not None else 2.5 * self.eps / self.cfg.steps

    def _one_run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`y` is the true label, or the target label when targeted (then the loss is descended)."""
        eps, norm = self.eps, self.norm
        step = -self.alpha if self.cfg.targeted else self.alpha
        x_adv = x.clone()
        if self.cfg.random_start and eps > 0:
            x_adv = random_start(x, eps, norm, generator)
        for _ in range(self.cfg.steps):
            grad = input_gradient(model, x_adv, y)
            x_adv = project(x_adv + step * steepest_step(grad, norm), x, eps, norm)
        return x_adv.detach()

    def _success(self, model: nn.Module, x_adv: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pred = model(x_adv).argmax(1)
        return pred == label if self.cfg.targeted else pred != label

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        label = y
        if self.cfg.targeted:
            with torch.no_grad():
                label = model(x).argmin(1)
        best = self._one_run(model, x, label, generator)
        if self.cfg.restarts == 1:
            return best
        robust = ~self._success(model, best, label)
        for _ in range(self.cfg.restarts - 1):
            idx = robust.nonzero().flatten()
            if len(idx) == 0:
                break
            candidate = self._one_run(model, x[idx], label[idx], generator)
            broken = self._success(model, candidate, label[idx])
            best[idx[broken]] = candidate[broken]
            robust[idx[broken]] = False
        return best
