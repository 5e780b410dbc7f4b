"""The attack axis: `perturb(model, x, y, generator) -> x_adv`, one small file per attack, inputs in [0, 1].

Every attack here is white-box (it needs input gradients of `model`). The harness decides the threat model per
cell: on a deployed predictor that has gradients the attack runs on it (white-box); on one that has none
(ONNX Runtime, INT8 kernels) it runs on the float eager twin and the result is scored on the deployed artifact
(transfer). The record always names which one produced the number.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from bench.config import check_range
from bench.registry import NoConfig, Registry

ATTACKS: Registry = Registry("attack")


@dataclasses.dataclass
class LinfConfig:
    """eps in [0, 1] pixel space (RobustBench CIFAR-10 uses 8/255)."""

    eps: float = 8 / 255

    def __post_init__(self) -> None:
        check_range("eps", self.eps, lo=0)


class Attack:
    """Base: subclasses implement `perturb`; `norm` and `eps` describe the threat model's ball."""

    norm: ClassVar[str] = "Linf"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @property
    def eps(self) -> float:
        return self.cfg.eps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(model(x), y) / dx, summed over the batch so each sample's gradient is independent of batch size."""
    x = x.detach().clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad.detach()


@ATTACKS.register("none", config=NoConfig)
class NoAttack(Attack):
    """No attack: the cell reports clean accuracy only (robust accuracy is null)."""

    eps = 0.0

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x


from bench.attacks import fgsm, pgd  # noqa: E402, F401
