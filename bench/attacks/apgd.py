r"""APGD: Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv:2003.01690), the APGD attack of AutoAttack. Distance measure: Linf (the
paper's main setting), or L2.

Written from the paper's Algorithm 1. Steepest ascent (sign(grad) under Linf, grad / ||grad||_2 under L2) with step
size eta = 2 * eps at first, projected onto the eps-ball and [0, 1], with momentum alpha = 0.75:

    z_{k+1} = P(x_k + eta_k * step(grad f(x_k)))
    x_{k+1} = P(x_k + alpha * (z_{k+1} - x_k) + (1 - alpha) * (x_k - x_{k-1}))      (the first step: x_1 = z_1)

The step size adapts per sample at checkpoints w_j = ceil(p_j * steps), p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): eta is halved, and the run restarts from the highest-loss point
found so far, when (1) fewer than rho * (w_j - w_{j-1}) of the steps since the last checkpoint raised the loss
(rho = 0.75), or (2) eta was not halved at the last checkpoint and the best loss has not improved since then.

Every sample is tracked on its own (step size, best loss and point, checkpoint counters); a sample leaves the batch
as soon as it is misclassified, so later steps spend forward and backward passes only on the unbroken ones (unless
`stop_early` is off, as for a transfer attack: then every sample runs all steps and ends at its highest-loss point). The
loss is the cross-entropy (APGD-CE) or the paper's Difference of Logits Ratio (APGD-DLR),
DLR = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), z_pi sorted decreasingly (needs >= 3 classes). Restarts start
at fresh random points (uniform in the Linf cube; uniform direction and radius in [0, eps] for L2) and attack only
the samples still unbroken. Returns, per sample, the first misclassified point found, else the highest-loss one.
`start=` (an eps sweep's warm start, see bench.evaluate) replaces the random start of the first run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.attacks import ATTACKS, Attack, LinfConfig, margin, project, random_start, steepest_step, zero_gradient
from bench.config import check_range
from bench.errors import SkipCell

MOMENTUM = 0.75  # alpha of the paper
RHO = 0.75  # condition (1): the share of loss-raising steps below which eta is halved


@dataclasses.dataclass
class APGDConfig(LinfConfig):
    steps: int = 100
    restarts: int = 1
    norm: Literal["Linf", "L2"] = "Linf"
    loss: Literal["ce", "dlr"] = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("steps", self.steps, lo=1)
        check_range("restarts", self.restarts, lo=1)


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j * steps), j >= 1, before `steps`, where the step size may be halved."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round() first: 0.22 * 100 is 22.000000000000004 in floating point, whose ceiling would be 23
    return sorted({math.ceil(round(q * steps, 9)) for q in p[1:]} & set(range(1, steps)))


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio per sample (to be maximised); invariant to shifts and scaling of the logits."""
    top = logits.topk(3, dim=1).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


@ATTACKS.register("apgd", config=APGDConfig, kind="gradient", primary="eps")
class APGD(Attack):
    """Auto-PGD (AutoAttack's APGD-CE / APGD-DLR): step-size free PGD with momentum, Linf or L2."""

    warm_starts = True

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "dlr":
            if logits.shape[1] < 3:
                raise SkipCell(f"the DLR loss needs at least 3 classes, the model has {logits.shape[1]}")
            return dlr_loss(logits, y)
        return F.cross_entropy(logits, y, reduction="none")

    def _evaluate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, need_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-sample loss, logits and (if asked) the input gradient of the loss, from one forward pass."""
        if not need_grad:
            with torch.no_grad():
                logits = model(x)
                return self._loss(logits, y), logits, None
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            loss = self._loss(logits, y)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), logits.detach(), grad.detach()

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_cur: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One run from `x_cur` (a point of the ball per sample): (x_out, best loss, broken) per sample."""
        eps, norm, steps = self.eps, self.norm, self.cfg.steps
        ckpts = set(checkpoints(steps))
        n = len(x)
        x_out = x.clone()
        loss_out = torch.full((n,), float("-inf"), device=x.device)
        broken = torch.zeros(n, dtype=torch.bool, device=x.device)

        loss_cur, logits, grad = self._evaluate(model, x_cur, y, need_grad=True)
        if self.last_zero_gradient is None:
            self.last_zero_gradient = zero_gradient(grad)
        # the state of the samples still in the batch (unbroken), row i being sample `act[i]`
        s = {
            "act": torch.arange(n, device=x.device),
            "x": x,
            "y": y,
            "x_cur": x_cur,
            "x_prev": x_cur,
            "loss_cur": loss_cur,
            "grad": grad,
            "x_max": x_cur,
            "loss_max": loss_cur,
            "grad_max": grad,
            "eta": torch.full((n,), 2 * eps, dtype=x.dtype, device=x.device),
            "n_raised": torch.zeros(n, device=x.device),  # loss-raising steps since the last checkpoint
            "halved": torch.zeros(n, dtype=torch.bool, device=x.device),  # at the last checkpoint
            "loss_max_ckpt": loss_cur,  # best loss at the last checkpoint
        }
        last_ckpt = 0
        for k in range(steps + 1):
            if k > 0:  # evaluate x_k (x_0 was evaluated above); the last point needs no gradient
                loss_k, logits, grad = self._evaluate(model, s["x_cur"], s["y"], need_grad=k < steps)
                s["n_raised"] = s["n_raised"] + (loss_k > s["loss_cur"])
                s["loss_cur"], s["grad"] = loss_k, grad
                better = loss_k > s["loss_max"]
                if better.any():
                    s["loss_max"] = torch.where(better, loss_k, s["loss_max"])
                    b = better.view(-1, *([1] * (x.dim() - 1)))
                    s["x_max"] = torch.where(b, s["x_cur"], s["x_max"])
                    if grad is not None:
                        s["grad_max"] = torch.where(b, grad, s["grad_max"])
            hit = logits.argmax(1) != s["y"]
            if not self.stop_early:  # crafting on a surrogate: note the break, keep raising the loss
                broken[s["act"][hit]] = True
            elif hit.any():  # record and drop the samples just broken
                idx = s["act"][hit]
                x_out[idx], loss_out[idx], broken[idx] = s["x_cur"][hit], s["loss_cur"][hit], True
                keep = ~hit
                s = {key: (v[keep] if v is not None else None) for key, v in s.items()}
            if k == steps or len(s["act"]) == 0:
                break
            if k in ckpts:
                few_raised = s["n_raised"] < RHO * (k - last_ckpt)
                stalled = ~s["halved"] & (s["loss_max"] <= s["loss_max_ckpt"])
                halve = few_raised | stalled
                s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
                if halve.any():  # restart from the best point, without momentum
                    h = halve.view(-1, *([1] * (x.dim() - 1)))
                    s["x_cur"] = torch.where(h, s["x_max"], s["x_cur"])
                    s["x_prev"] = torch.where(h, s["x_max"], s["x_prev"])
                    s["grad"] = torch.where(h, s["grad_max"], s["grad"])
                    s["loss_cur"] = torch.where(halve, s["loss_max"], s["loss_cur"])
                s["halved"], s["loss_max_ckpt"] = halve, s["loss_max"]
                s["n_raised"] = torch.zeros_like(s["n_raised"])
                last_ckpt = k
            eta = s["eta"].view(-1, *([1] * (x.dim() - 1)))
            x_cur, x_clean = s["x_cur"], s["x"]
            z = project(x_cur + eta * steepest_step(s["grad"], norm), x_clean, eps, norm)
            if k > 0:
                z = project(x_cur + MOMENTUM * (z - x_cur) + (1 - MOMENTUM) * (x_cur - s["x_prev"]), x_clean, eps, norm)
            s["x_prev"], s["x_cur"] = x_cur, z
        idx = s["act"]
        x_out[idx], loss_out[idx] = s["x_max"], s["loss_max"]
        return x_out.detach(), loss_out, broken

    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.last_zero_gradient = None
        if self.eps == 0 or len(x) == 0:
            return x.clone()
        eps, norm = self.eps, self.norm
        x_start = project(start, x, eps, norm) if start is not None else random_start(x, eps, norm, generator)
        x_out, loss_best, broken = self._run(model, x, y, x_start)
        for _ in range(self.cfg.restarts - 1):
            idx = (~broken).nonzero().flatten()
            if len(idx) == 0:
                break
            cand, cand_loss, cand_broken = self._run(model, x[idx], y[idx], random_start(x[idx], eps, norm, generator))
            take = cand_broken | (cand_loss > loss_best[idx])
            x_out[idx[take]], loss_best[idx[take]] = cand[take], cand_loss[take]
            broken[idx[cand_broken]] = True
        return x_out
