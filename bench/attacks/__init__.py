"""The attack axis: `perturb(model, x, y, generator) -> x_adv`, one small file per attack, inputs in [0, 1].

Every attack declares its `kind` when it registers, and the harness reads that, never the attack's name:
- `gradient` (FGSM, PGD, APGD): needs input gradients of `model`. On a deployed predictor that has gradients the
  attack runs on it (white-box); on one that has none (ONNX Runtime, INT8 kernels) it runs on the float eager twin
  and the result is scored on the deployed artifact (transfer). `single_step=True` marks one-step attacks (FGSM),
  which the run-level invariants expect iterative attacks to match or beat.
- `query` (Square): calls `model` only forward, under `torch.no_grad`, so `model` may be any callable
  batch -> logits, the deployed predictor included (black-box).
- `composite` (worst_case): its `members` are attacks of the other kinds; a sample is robust only if it survives
  every member, each under its own threat model.
- `none`: no attack (clean accuracy only).
The record always names which threat model produced the number (bench.threat_models).

The threat model's ball is `attack.norm` ("Linf" or "L2", from the config's `norm` where it has one) and
`attack.eps`, both in [0, 1] pixel space.

Two optional parts of the protocol let the harness save work (bench.evaluate):
- `warm_starts = True`: `perturb` takes `start=` (points of the eps-ball, one per sample) and begins there instead
  of at its own start; an eps sweep starts each larger eps from the smaller eps's adversarial points.
- `last_zero_gradient`: after `perturb`, a gradient attack may leave the per-sample flags "the input gradient of its
  first step was all zero" here, which the harness's gradient-masking check reads instead of taking a gradient of
  its own (None: the harness takes one).
- `stop_early`: an attack that drops a sample at its first adversarial point reads this flag first. The harness
  sets it False when it crafts on a surrogate (a transfer attack): a point that barely fools the surrogate often
  does not fool the deployed model, so the attack keeps strengthening every sample for all its steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from bench.config import check_range
from bench.errors import ConfigError
from bench.registry import NoConfig, Registry

ATTACK_KINDS = ("gradient", "query", "composite", "none")
ATTACKS: Registry = Registry("attack", package="bench.attacks", allowed={"kind": ATTACK_KINDS})


@dataclasses.dataclass
class LinfConfig:
    """eps in [0, 1] pixel space (RobustBench CIFAR-10 uses 8/255)."""

    eps: float = 8 / 255

    def __post_init__(self) -> None:
        check_range("eps", self.eps, lo=0)
        # pixels are in [0, 1]: an Linf radius above 1 is a unit mistake (eps: 8 for 8/255), not a stronger attack
        if getattr(self, "norm", "Linf") == "Linf" and self.eps > 1:
            raise ConfigError(
                "eps", f"must be at most 1 for Linf (pixels are in [0, 1]; 8/255 is 0.0314), got {self.eps}"
            )


def attack_kind(attack: Any) -> str:
    """The `kind` an attack's class declared when it registered (gradient when unregistered, e.g. in tests)."""
    entry = ATTACKS.entry_for(type(attack))
    return entry.capabilities.get("kind", "gradient") if entry else "gradient"


class Attack:
    """Base: subclasses implement `perturb`; `norm` and `eps` describe the threat model's ball.

    `norm` is the config's `norm` where the config has one, else the class's `norm_default`.
    """

    norm_default: ClassVar[str] = "Linf"
    warm_starts: ClassVar[bool] = False  # perturb(..., start=) begins at given points of the ball

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.last_zero_gradient: torch.Tensor | None = None  # per sample of the last batch, where the attack knows
        self.stop_early = True  # False: no sample leaves the batch at its first adversarial point (transfer)

    @property
    def eps(self) -> float:
        return self.cfg.eps

    @property
    def norm(self) -> str:
        return getattr(self.cfg, "norm", self.norm_default)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(model(x), y) / dx, summed over the batch so each sample's gradient is independent of batch size."""
    x = x.detach().clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad.detach()


def logits_and_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Callable[..., torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-sample loss, logits, d sum(loss) / dx) from one forward and one backward pass; the loss is the
    cross-entropy unless `loss(logits, y)` (per sample) is given. Each sample's gradient is independent of the batch."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        per_sample = loss(logits, y) if loss else nn.functional.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(per_sample.sum(), x)
    return per_sample.detach(), logits.detach(), grad.detach()


def zero_gradient(grad: torch.Tensor) -> torch.Tensor:
    """Per sample: is the input gradient exactly zero everywhere (a white-box attack is blind there)."""
    return grad.flatten(1).abs().amax(1) == 0


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (N,) tensor shaped to broadcast against the (N, ...) tensor `like`."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def l2_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of an (N, ...) tensor, shape (N,)."""
    return t.flatten(1).norm(p=2, dim=1)


def steepest_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-size ascent direction for `norm`: sign(grad) for Linf, grad / ||grad||_2 per sample for L2."""
    if norm == "Linf":
        return grad.sign()
    return grad / _per_sample(l2_norm(grad) + 1e-10, grad)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Onto the `norm` ball of radius eps around x, then into [0, 1] (clipping never leaves the ball)."""
    if norm == "Linf":
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    delta = x_adv - x
    factor = (eps / l2_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta * _per_sample(factor, delta)).clamp(0, 1)


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A random point of the eps-ball around x, clipped to [0, 1], drawn from `generator` (on the CPU).

    Linf: uniform in the cube. L2: a uniform direction scaled by a radius uniform in [0, eps] (torchattacks'
    PGDL2; a volume-uniform radius would put almost every start on the sphere in high dimension).
    """
    if norm == "Linf":
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return (x + (2 * noise - 1) * eps).clamp(0, 1)
    direction = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    radius = torch.rand(len(x), generator=generator, dtype=x.dtype)
    delta = direction * _per_sample(radius * eps / (l2_norm(direction) + 1e-12), direction)
    return (x + delta.to(x.device)).clamp(0, 1)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logit of the true class minus the largest other logit, per sample (< 0: misclassified, 0: a tie)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).max(1).values
    return true - others


def query(model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
    """Logits of a forward-only call: any callable batch -> logits (a module, an ONNX Runtime predictor), float32
    on x's device, computed under torch.no_grad."""
    with torch.no_grad():
        return torch.as_tensor(model(x)).float().to(x.device)


@ATTACKS.register("none", config=NoConfig, kind="none")
class NoAttack(Attack):
    """No attack: the cell reports clean accuracy only (robust accuracy is null)."""

    eps = 0.0

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x
