r"""FGSM: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
(arXiv:1412.6572). Distance measure: Linf (the paper's), or L2.

Linf: x_adv = clip_[0,1](x + eps * sign(grad_x CE(f(x), y)))
L2:   x_adv = clip_[0,1](x + eps * grad / ||grad||_2), the gradient normalised per sample (the fast gradient
method under L2, e.g. torchattacks' / cleverhans' `norm=2` variant).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from bench.attacks import ATTACKS, Attack, LinfConfig, input_gradient, steepest_step, zero_gradient


@dataclasses.dataclass
class FGSMConfig(LinfConfig):
    norm: Literal["Linf", "L2"] = "Linf"


@ATTACKS.register("fgsm", config=FGSMConfig, kind="gradient", single_step=True, primary="eps")
class FGSM(Attack):
    """Fast Gradient Sign Method (one step of size eps; under L2 along the normalised gradient)."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        grad = input_gradient(model, x, y)
        self.last_zero_gradient = zero_gradient(grad)
        return (x + self.eps * steepest_step(grad, self.norm)).clamp(0, 1).detach()
