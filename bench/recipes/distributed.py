r"""`ddp`: distributed data-parallel training (torch.distributed + DistributedDataParallel) launched through torchrun.

The ranks are launched by `bench.launch.run_workers` (torchrun; rank 0's state_dict comes back into `model`) and
each runs `ddp_worker`: `bench.training.fit`, the one training loop, on the DDP-wrapped model with this rank's
`GlobalBatches` plan. Backend: gloo on the CPU, nccl on CUDA (`backend: auto`), one GPU per rank.

Same weights as one process: every epoch draws one seeded global permutation (`seed + epoch`, as
`DistributedSampler` does, so it does not depend on the number of ranks); step k takes global batch
`perm[k * batch_size : (k + 1) * batch_size]` and each rank takes its contiguous slice of it (`GlobalBatches`).
The local loss is `sum of per-sample CE * world_size / global batch`, so DDP's gradient average is the mean over the
global batch even when the slices differ in size (the last, partial batch), and an empty slice adds 0. BatchNorm
layers become synchronised BatchNorm over the global batch: `nn.SyncBatchNorm` with nccl, and `GlooSyncBatchNorm`
(the same statistics through differentiable all_reduce, since `nn.SyncBatchNorm` refuses CPU tensors) with gloo.
With the same seed, global batch and steps, N processes then give the weights of 1 process up to float summation
order.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from bench.config import check_range
from bench.errors import ConfigError
from bench.launch import load_worker_inputs, process_group, run_workers, write_outputs
from bench.recipes import RECIPES
from bench.training import Batch, OptimConfig, TrainCost, fit, summed_cross_entropy
from bench.types import DataSplits

# --- config --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DDPConfig(OptimConfig):
    """Optimiser and schedule (as `standard`; `batch_size` is the global batch, split across the ranks)."""

    world_size: int = 2  # processes (ranks); one GPU each with nccl
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on a CUDA device, gloo on the CPU
    timeout_s: float | None = None  # wall-clock limit of the whole torchrun launch; None: no limit

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("world_size", self.world_size, lo=1)
        check_range("timeout_s", self.timeout_s, lo=0, lo_open=True)
        if self.batch_size < self.world_size:
            raise ConfigError(
                "batch_size",
                f"the global batch ({self.batch_size}) must give every one of {self.world_size} ranks a sample",
            )


# --- backend -------------------------------------------------------------------------------------------------------


def resolve_backend(backend: str, device: str, world_size: int) -> str:
    """The process-group backend for `device`; raises ConfigError for a combination that cannot run."""
    cuda = device.startswith("cuda")
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl":
        if not cuda:
            raise ConfigError("backend", f"nccl needs a CUDA device; the cell runs on '{device}' (use gloo)")
        if world_size > torch.cuda.device_count():
            raise ConfigError(
                "world_size", f"nccl runs one rank per GPU: {world_size} ranks, {torch.cuda.device_count()} GPU(s)"
            )
    return backend


# --- sampling ------------------------------------------------------------------------------------------------------


class GlobalBatches:
    """This rank's contiguous slice of each global batch of a seeded per-epoch permutation (a `fit` batch plan).

    The permutation is `DistributedSampler`'s (`randperm(n)` from `seed + epoch`), the same on every rank and for
    every world size, and the global batches are consecutive `batch_size` runs of it (the last may be short), so
    N ranks together see exactly the batches one process sees. Each slice comes with the factor `world_size / global
    batch` for a summed loss (`summed_cross_entropy`): DDP averages the ranks' gradients, which then is the gradient
    of the mean over the global batch.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def batches(self, epoch: int) -> Iterator[Batch]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
        for batch in torch.split(order, self.batch_size):
            yield torch.tensor_split(batch, self.world_size)[self.rank], self.world_size / len(batch)


# --- synchronised BatchNorm on gloo --------------------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) with autograd: the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Synchronised BatchNorm for any device and backend: global-batch mean and (two-pass) variance via all_reduce.

    `nn.SyncBatchNorm` refuses CPU tensors, and DDP refuses it in a CPU module. This normalises with BatchNorm's
    statistics over the union of the ranks' batches (the slices may differ in size, or be empty), with gradients
    through the reductions, and updates the running statistics with the global unbiased variance. Outside
    training, or with one rank, it is plain BatchNorm. Parameters, buffers and state_dict keys are BatchNorm's.
    """

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group or dist.group.WORLD
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() / max(1, channels)], dtype=input.dtype, device=input.device)
        sums = _AllReduceSum.apply(torch.cat([input.sum(dims), count]), group)
        total = float(sums[channels].detach())
        if total < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got {total:g} over all ranks")
        mean = sums[:channels] / total
        centred = input - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), group) / total
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (total / (total - 1)), alpha=factor)
        return out


def _to_gloo_sync(module: nn.Module, group: Any) -> nn.Module:
    """`nn.SyncBatchNorm.convert_sync_batchnorm` with `GlooSyncBatchNorm` as the target."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, (GlooSyncBatchNorm, nn.SyncBatchNorm)
    ):
        out = GlooSyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group=group,
        )
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_gloo_sync(child, group))
    return out


def sync_batchnorm(model: nn.Module, backend: str, group: Any = None) -> nn.Module:
    """BatchNorm layers -> synchronised ones: `nn.SyncBatchNorm` on nccl, `GlooSyncBatchNorm` otherwise."""
    if backend == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    return _to_gloo_sync(model, group)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --- one rank ------------------------------------------------------------------------------------------------------


def train_rank(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: OptimConfig,
    *,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """One rank's share of data-parallel training of `model` (already wrapped in DDP when world_size > 1).

    With world_size 1 and no process group this is the single-process reference the ranks reproduce.
    Returns the training seconds, steps and the global mean loss of the last step.
    """
    plan = GlobalBatches(len(x), cfg.batch_size, seed=seed, rank=rank, world_size=world_size)
    cost = fit(model, x, y, cfg, seed=seed, device=str(device), loss_fn=summed_cross_entropy, plan=plan)
    steps = cost.epochs * len(plan)
    # Each rank's last loss is its slice's share of the global mean times world_size: the sum over ranks / world.
    final = torch.tensor(cost.final_loss, dtype=torch.float32, device=device) / world_size
    # each epoch's mean loss the same way: the ranks' shares summed, for the record's loss per epoch
    epochs = torch.tensor([e["loss"] if e["loss"] is not None else float("nan") for e in cost.history], device=device)
    epochs = epochs / world_size
    if world_size > 1:
        dist.all_reduce(final)
        dist.all_reduce(epochs)
    history = [{"epoch": e["epoch"], "loss": round(float(v), 6)} for e, v in zip(cost.history, epochs, strict=True)]
    return {
        "train_seconds": cost.seconds,
        "steps": steps,
        "final_loss": float(final) if steps else float("nan"),
        "history": history,
    }


def ddp_worker(spec: dict[str, Any]) -> None:
    """A torchrun rank of `ddp` (the spec's `worker`, run by `bench.launch`)."""
    from torch.nn.parallel import DistributedDataParallel

    with process_group(spec) as (rank, world, device):
        cfg, model, data = load_worker_inputs(spec, DDPConfig)
        if has_batchnorm(model) and world > 1:
            # A group of its own: the statistics' all_reduce (also in backward) never interleaves with DDP's buckets.
            bn_group = dist.new_group(backend=spec["backend"])
            model = sync_batchnorm(model, spec["backend"], bn_group)
        model.to(device)
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        out = train_rank(ddp, data["x"], data["y"], cfg, seed=spec["seed"], device=device, rank=rank, world_size=world)
        if rank == 0:
            write_outputs(spec, model, out)


# --- the recipe ----------------------------------------------------------------------------------------------------


@RECIPES.register("ddp", config=DDPConfig, launches_workers=True)
def ddp(model: nn.Module, data: DataSplits, cfg: DDPConfig, *, seed: int, device: str) -> TrainCost:
    """Data-parallel cross-entropy training on `world_size` torchrun processes (DDP; SyncBatchNorm for BatchNorm)."""
    backend = resolve_backend(cfg.backend, device, cfg.world_size)
    start = time.perf_counter()
    blob = {"x": data.x_train.cpu(), "y": data.y_train.cpu()}
    result = run_workers(
        f"{__name__}:ddp_worker",
        cfg.world_size,
        model,
        blob,
        cfg,
        seed=seed,
        device=device,
        backend=backend,
        what="ddp",
        timeout_s=cfg.timeout_s,
    )
    model.to(device).eval()
    seconds = time.perf_counter() - start
    seen = cfg.epochs * len(data.x_train)
    extra = {
        "processes": cfg.world_size,
        "backend": backend,
        "launcher": "torchrun",
        "train_seconds": round(result["train_seconds"], 4),  # rank 0's training loop alone
        "overhead_seconds": round(seconds - result["train_seconds"], 4),  # process start, group set-up, files
        "steps": result["steps"],
        "global_batch": cfg.batch_size,
        "sync_batchnorm": has_batchnorm(model) and cfg.world_size > 1,
    }
    rate = seen / seconds if seconds > 0 else 0.0
    return TrainCost(seconds, cfg.epochs, seen, rate, result["final_loss"], extra, history=result.get("history", []))
