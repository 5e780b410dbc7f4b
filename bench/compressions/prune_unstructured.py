"""`prune_unstructured`: global magnitude (L1) sparsity with `torch.nn.utils.prune` (Han et al., "Learning both
Weights and Connections for Efficient Neural Networks", NeurIPS 2015, arXiv:1506.02626).

Zeroed weights stay in dense tensors: the artifact is no smaller and no faster on dense kernels. It is here for
comparison with structured pruning; the record says so (`saves_latency: false`).
"""

from __future__ import annotations

import dataclasses
import time

from torch import nn
from torch.nn.utils import prune as torch_prune

from bench.compressions import COMPRESSIONS, CompressContext, Compressed, finetune
from bench.config import check_range


@dataclasses.dataclass
class UnstructuredConfig:
    sparsity: float = 0.5  # fraction of Conv / Linear weights set to zero, ranked globally by |w|
    finetune_epochs: int = 0
    finetune_lr: float = 0.01

    def __post_init__(self) -> None:
        check_range("sparsity", self.sparsity, lo=0, hi=1, lo_open=True, hi_open=True)
        check_range("finetune_epochs", self.finetune_epochs, lo=0)
        check_range("finetune_lr", self.finetune_lr, lo=0, lo_open=True)


def weight_sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights over all Conv2d / Linear weights."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


@COMPRESSIONS.register("prune_unstructured", config=UnstructuredConfig, dtype="fp32", primary="sparsity")
def prune_unstructured(model: nn.Module, cfg: UnstructuredConfig, ctx: CompressContext) -> Compressed:
    """Global L1 unstructured pruning (masks made permanent), optional fine-tuning with the masks kept."""
    model = model.cpu()
    targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    start = time.perf_counter()
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=cfg.sparsity)
    cost = finetune(model, ctx, cfg.finetune_epochs, cfg.finetune_lr)  # the masks keep pruned weights at zero
    for module, name in targets:
        torch_prune.remove(module, name)  # bake the zeros into plain dense weights
    sparsity = weight_sparsity(model)
    if abs(sparsity - cfg.sparsity) > 0.01:
        raise RuntimeError(f"sparsity {sparsity:.3f} differs from the requested {cfg.sparsity}")
    meta = {"sparsity": sparsity, "saves_latency": False, "prune_s": time.perf_counter() - start, **cost}
    return Compressed(model.eval(), meta=meta)
