r"""Square Attack: Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020 (arXiv:1912.00049). Distance measure: Linf.

A score-based black-box attack: it only *queries* the model (forward passes under torch.no_grad, no gradients), so
`model` may be any callable batch -> logits, e.g. an ONNX Runtime predictor that takes and returns tensors. Random
search on the margin loss L = z_y - max_{k != y} z_k:

- start at x + eps * s with s in {-1, +1} drawn per channel and column (vertical stripes), clipped to [0, 1];
- each iteration proposes, for every sample not yet misclassified, a new vertex of the eps-ball that differs from
  its current best only in one random s x s window (all channels), where the window's perturbation is set to
  +-eps per channel; the proposal is kept when it lowers the margin (a proposal may equal the current point: like
  AutoAttack's version, no query-free redraw as in the authors' first code);
- the window side s = round(sqrt(p * h * w)) (>= 1, < the image side) shrinks with p, which starts at `p_init`
  and is halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10,000-query run, rescaled to
  the budget (the authors' schedule);
- a sample stops being queried as soon as it is misclassified (argmax != y); `queries` is the budget per sample,
  the initial point included.

After `perturb`, `last_queries` holds the queries spent on each sample of that call (int64, CPU). Returns, per
sample, the first misclassified point found, else the lowest-margin one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from bench.attacks import ATTACKS, Attack, LinfConfig, margin, query
from bench.config import check_range

HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of a 10,000-iteration run
MAX_REDRAWS = 0  # redraws of a proposal that equals the current point (no query is spent on them)


@dataclasses.dataclass
class SquareConfig(LinfConfig):
    queries: int = 1000  # budget per sample
    p_init: float = 0.8  # initial share of the image covered by the square

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("queries", self.queries, lo=1)
        check_range("p_init", self.p_init, lo=0, hi=1, lo_open=True)


def p_schedule(p_init: float, iteration: int, budget: int) -> float:
    """p at `iteration` (0-based) of a run of `budget` queries: halved at the authors' rescaled milestones."""
    it = int(iteration / budget * 10000)
    return p_init / 2 ** sum(it > m for m in HALVINGS)


def window_corners(n: int, side: int, s: int, generator: torch.Generator) -> torch.Tensor:
    """n top-left offsets of an s-wide window along an axis of length `side`, uniform over all side - s + 1.

    (The authors' code, and torchattacks / AutoAttack after it, draw from range(side - s), never placing the window
    against the bottom or right edge; on 8 x 8 digits that left ~12 points of robust accuracy standing.)
    """
    return torch.randint(0, side - s + 1, (n,), generator=generator)


def _signs(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(like.device, like.dtype)


@ATTACKS.register("square", config=SquareConfig, kind="query", primary="eps")
class Square(Attack):
    """Square Attack (Linf): random search over square windows, forward queries only."""

    last_queries: torch.Tensor | None = None

    def perturb(
        self, model: Callable[[torch.Tensor], Any], x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        eps, budget = self.eps, self.cfg.queries
        n = len(x)
        used = torch.zeros(n, dtype=torch.int64)
        self.last_queries = used
        if eps == 0 or n == 0:
            return x.clone()
        c, h, w = x.shape[1:]
        x_lo, x_hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)  # the two values a vertex takes per pixel

        x_best = torch.where(_signs((n, c, 1, w), generator, x) > 0, x_hi, x_lo)
        logits = query(model, x_best)
        used += 1
        m_best = margin(logits, y)
        act = (logits.argmax(1) == y).nonzero().flatten()
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        for i in range(budget - 1):
            if len(act) == 0:
                break
            p = p_schedule(self.cfg.p_init, i, budget)
            s = max(min(round(math.sqrt(p * h * w)), min(h, w) - 1), 1)
            na = len(act)
            vh, vw = (window_corners(na, side, s, generator).to(x.device)[:, None] for side in (h, w))
            in_rows = (rows >= vh) & (rows < vh + s)
            in_cols = (cols >= vw) & (cols < vw + s)
            window = in_rows[:, None, :, None] & in_cols[:, None, None, :]
            xb, lo, hi = x_best[act], x_lo[act], x_hi[act]
            x_new = torch.where(window, torch.where(_signs((na, c, 1, 1), generator, x) > 0, hi, lo), xb)
            logits = query(model, x_new)
            used[act.cpu()] += 1
            ya = y[act]
            m = margin(logits, ya)
            hit = logits.argmax(1) != ya
            take = hit | (m < m_best[act])
            x_best[act[take]], m_best[act[take]] = x_new[take], m[take]
            act = act[~hit]
        return x_best
