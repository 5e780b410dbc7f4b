r"""PGD: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018 (arXiv:1706.06083). Distance measure: Linf (the paper's), or L2.

Start at a random point of the eps-ball (random_start), take `steps` steepest-ascent steps of size `alpha` on the
cross-entropy, project back onto the eps-ball and [0, 1] after each. Linf steps along sign(grad) and starts
uniformly in the cube; L2 steps along grad / ||grad||_2 (per sample), projects onto the L2 ball and starts at a
uniform direction with a radius uniform in [0, eps] (as torchattacks.PGDL2). With `restarts` > 1 a sample counts
as broken if any restart breaks it (per-sample worst case); only samples still unbroken are attacked again.
The default step size 2.5 * eps / steps is Madry et al.'s rule.

With `early_stop` (the default; the adversarial-training recipes turn it off, since they train on the loss
maximiser) a sample leaves the batch as soon as it is misclassified (targeted: as soon as it reaches its target):
its first adversarial point is kept, and later steps spend forward and backward passes only on the samples still
unbroken. Whether a point is broken is read from the logits of the forward pass that also gives its gradient, so
the early stop costs no extra pass. Without random start the result therefore equals the textbook PGD's
(torchattacks') on every sample that PGD never breaks, and is adversarial wherever the two differ. `start=` (an
eps sweep's warm start, see bench.evaluate) replaces the random start of the first run.

`targeted`: the target of each sample is its least-likely class under the clean logits (argmin, a deterministic
choice) and each step descends the cross-entropy to it; a restart counts as successful when the prediction is
the target. The harness still scores robust accuracy as prediction == true label.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from bench.attacks import (
    ATTACKS,
    Attack,
    LinfConfig,
    logits_and_gradient,
    project,
    random_start,
    steepest_step,
    zero_gradient,
)
from bench.config import check_range


@dataclasses.dataclass
class PGDConfig(LinfConfig):
    alpha: float | None = None  # step size; None: 2.5 * eps / steps
    steps: int = 10
    random_start: bool = True
    restarts: int = 1
    norm: Literal["Linf", "L2"] = "Linf"
    targeted: bool = False  # toward the least-likely clean class
    # stop each sample at its first adversarial point (evaluation: a fooled sample is fooled); False runs every
    # step on every sample, as adversarial training needs (it trains on the loss maximiser, not the first miss)
    early_stop: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("alpha", self.alpha, lo=0)
        check_range("steps", self.steps, lo=1)
        check_range("restarts", self.restarts, lo=1)


@ATTACKS.register("pgd", config=PGDConfig, kind="gradient", primary="eps")
class PGD(Attack):
    """Projected Gradient Descent under Linf or L2, with random start, restarts and an optional target."""

    warm_starts = True

    @property
    def alpha(self) -> float:
        return self.cfg.alpha if self.cfg.alpha is not None else 2.5 * self.eps / self.cfg.steps

    def _broken(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == label if self.cfg.targeted else pred != label

    def _one_run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        label: torch.Tensor,
        x_start: torch.Tensor,
        check_last: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_adv, broken) from `x_start`. `label` is the true label, or the target when targeted (then the loss is
        descended). `broken` is known for the samples that stopped early, and for the rest only if `check_last`
        (one forward pass on the last points of the samples still unbroken)."""
        eps, norm = self.eps, self.norm
        step = -self.alpha if self.cfg.targeted else self.alpha
        x_out = x_start.clone()
        broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        act = torch.arange(len(x), device=x.device)  # the samples still in the batch
        x_cur, x_clean, lab = x_start, x, label
        for k in range(self.cfg.steps):
            _, logits, grad = logits_and_gradient(model, x_cur, lab)
            if k == 0 and self.last_zero_gradient is None:
                self.last_zero_gradient = zero_gradient(grad)
            hit = self._broken(logits, lab) if self.cfg.early_stop and self.stop_early else None
            if hit is not None and hit.any():  # keep the first adversarial point and drop the sample
                x_out[act[hit]], broken[act[hit]] = x_cur[hit], True
                keep = ~hit
                act, x_cur, x_clean, lab, grad = act[keep], x_cur[keep], x_clean[keep], lab[keep], grad[keep]
                if len(act) == 0:
                    return x_out, broken
            x_cur = project(x_cur + step * steepest_step(grad, norm), x_clean, eps, norm)
        x_out[act] = x_cur
        if check_last:
            with torch.no_grad():
                broken[act] = self._broken(model(x_cur), lab)
        return x_out, broken

    def _start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.cfg.random_start and self.eps > 0:
            return random_start(x, self.eps, self.norm, generator)
        return x.clone()

    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.last_zero_gradient = None
        if len(x) == 0:
            return x.clone()
        label = y
        if self.cfg.targeted:
            with torch.no_grad():
                label = model(x).argmin(1)
        x_start = project(start, x, self.eps, self.norm) if start is not None else self._start(x, generator)
        restarts = self.cfg.restarts
        best, broken = self._one_run(model, x, label, x_start, check_last=restarts > 1)
        for _ in range(restarts - 1):
            idx = (~broken).nonzero().flatten()
            if len(idx) == 0:
                break
            candidate, cand_broken = self._one_run(
                model, x[idx], label[idx], self._start(x[idx], generator), check_last=True
            )
            best[idx[cand_broken]] = candidate[cand_broken]
            broken[idx[cand_broken]] = True
        return best
