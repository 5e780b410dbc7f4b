"""Batched forward passes: logits and accuracy of any callable batch -> logits (a module, a deployed predictor)."""

from __future__ import annotations

from collections.abc import Callable

import torch


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for x in batches (CPU tensor out)."""
    outs = [model(x[i : i + batch_size]).detach().float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> float:
    return float((predict(model, x, batch_size).argmax(1) == y.cpu()).float().mean())


def rate(flags: torch.Tensor) -> float:
    """Share of True flags, as an exact ratio of counts (a float32 mean would print 0.925000011920929)."""
    return int(flags.sum()) / len(flags) if len(flags) else float("nan")
