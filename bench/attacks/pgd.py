r"""PGD: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018 (arXiv:1706.06083). Distance measure: Linf.

Start uniformly in the eps-ball (random_start), take `steps` signed-gradient steps of size `alpha` on the
cross-entropy, project back onto the eps-ball and [0, 1] after each. With `restarts` > 1 a sample counts as
broken if any restart breaks it (per-sample worst case); only samples still unbroken are attacked again.
The default step size 2.5 * eps / steps is Madry et al.'s rule.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bench.attacks import ATTACKS, Attack, LinfConfig, input_gradient
from bench.config import check_range


@dataclasses.dataclass
class PGDConfig(LinfConfig):
    alpha: float | None = None  # step size; None: 2.5 * eps / steps
    steps: int = 10
    random_start: bool = True
    restarts: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("alpha", self.alpha, lo=0)
        check_range("steps", self.steps, lo=1)
        check_range("restarts", self.restarts, lo=1)


@ATTACKS.register("pgd", config=PGDConfig, needs_gradients=True, primary="eps")
class PGD(Attack):
    """Projected Gradient Descent under Linf, with random start and restarts."""

    @property
    def alpha(self) -> float:
        return self.cfg.alpha if self.cfg.alpha is not None else 2.5 * self.eps / self.cfg.steps

    def _one_run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        eps = self.eps
        x_adv = x.clone()
        if self.cfg.random_start and eps > 0:
            noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x_adv = (x + (2 * noise - 1) * eps).clamp(0, 1)
        for _ in range(self.cfg.steps):
            grad = input_gradient(model, x_adv, y)
            x_adv = x_adv + self.alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        best = self._one_run(model, x, y, generator)
        if self.cfg.restarts == 1:
            return best
        with torch.no_grad():
            robust = model(best).argmax(1) == y
        for _ in range(self.cfg.restarts - 1):
            idx = robust.nonzero().flatten()
            if len(idx) == 0:
                break
            candidate = self._one_run(model, x[idx], y[idx], generator)
            with torch.no_grad():
                broken = model(candidate).argmax(1) != y[idx]
            best[idx[broken]] = candidate[broken]
            robust[idx[broken]] = False
        return best
