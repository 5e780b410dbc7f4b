r"""FGSM: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
(arXiv:1412.6572). Distance measure: Linf.

x_adv = clip_[0,1](x + eps * sign(grad_x CE(f(x), y)))
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bench.attacks import ATTACKS, Attack, LinfConfig, input_gradient


@dataclasses.dataclass
class FGSMConfig(LinfConfig):
    pass


@ATTACKS.register("fgsm", config=FGSMConfig, needs_gradients=True, primary="eps")
class FGSM(Attack):
    """Fast Gradient Sign Method (one step of size eps)."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        grad = input_gradient(model, x, y)
        return (x + self.eps * grad.sign()).clamp(0, 1).detach()
