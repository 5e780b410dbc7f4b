r"""`ddp`: distributed data-parallel training (torch.distributed + DistributedDataParallel) launched through torchrun.

The recipe writes the model (the pickled whole module, `torch.save(model)`), the train split and a JSON spec into a
temporary folder, runs `python -m torch.distributed.run --standalone --nproc_per_node N -m bench.recipes.dist_worker
spec.json` as a subprocess, and loads the state_dict that rank 0 saves back into `model`. Backend: gloo on the CPU,
nccl on CUDA (`backend: auto`), one GPU per rank.

Same weights as one process: every epoch draws one seeded global permutation (`seed + epoch`, as
`DistributedSampler` does, so it does not depend on the number of ranks); step k takes global batch
`perm[k * batch_size : (k + 1) * batch_size]` and each rank takes its contiguous slice of it (`GlobalBatchSampler`).
The local loss is `sum of per-sample CE * world_size / global batch`, so DDP's gradient average is the mean over the
global batch even when the slices differ in size (the last, partial batch). BatchNorm layers become synchronised
BatchNorm over the global batch: `nn.SyncBatchNorm` with nccl, and `GlooSyncBatchNorm` (the same statistics through
differentiable all_reduce, since `nn.SyncBatchNorm` refuses CPU tensors) with gloo. With the same seed, global batch
and steps, N processes then give the weights of 1 process up to float summation order.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data.distributed import DistributedSampler

from bench.config import check_range, parse_config
from bench.errors import ConfigError
from bench.recipes import RECIPES
from bench.training import OptimConfig, TrainCost

LOG_TAIL_CHARS = 4000  # how much of the workers' output a failure message quotes

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


# --- launching (shared with `fedavg`) ------------------------------------------------------------------------------


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


def rank_device(device: str, local_rank: int) -> torch.device:
    """The device of one rank: the CPU, or GPU (index of `device` + local rank) modulo the GPU count."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    return torch.device("cuda", ((dev.index or 0) + local_rank) % max(1, torch.cuda.device_count()))


def _worker_env(nproc: int) -> dict[str, str]:
    env = dict(os.environ)
    # The workers unpickle the model: they must import whatever this process can (user models, test helpers).
    paths = [p or os.getcwd() for p in sys.path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # Split the cores between the ranks unless the caller chose; torchrun would otherwise force 1 and warn.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def torchrun(nproc: int, spec: dict[str, Any], workdir: Path, *, what: str, timeout_s: float | None = None) -> float:
    """Run `bench.recipes.dist_worker` on `nproc` local ranks through torchrun; return the wall seconds.

    The spec goes to `workdir/spec.json`; the workers' output to `workdir/torchrun.log`, whose tail a failure
    (RuntimeError) quotes. On a timeout or an interrupt the launcher's whole process group is stopped.
    """
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += ["-m", "bench.recipes.dist_worker", str(spec_path)]
    log_path = workdir / "torchrun.log"
    start = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=_worker_env(nproc), start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:  # timed out or interrupted: stop the launcher and its workers
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        why = f"timed out after {timeout_s:g} s" if code is None else f"exited with {code}"
        raise RuntimeError(f"{what}: torchrun ({nproc} processes) {why}; its output ends:\n{tail}")
    return seconds


def init_process_group(spec: dict[str, Any]) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device) after joining the group torchrun set up in the environment."""
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = rank_device(spec["device"], local_rank)
    kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=spec.get("pg_timeout_s", 1800))}
    if spec["backend"] == "nccl":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(spec["backend"], **kwargs)
    return rank, world, device


# --- sampling ------------------------------------------------------------------------------------------------------


class GlobalBatchSampler(DistributedSampler):
    """This rank's contiguous slice of each global batch of a seeded per-epoch permutation; call `set_epoch`.

    The permutation is `DistributedSampler`'s (`randperm(n)` from `seed + epoch`), the same on every rank and for
    every world size, and the global batches are consecutive `batch_size` runs of it (the last may be short), so
    N ranks together see exactly the batches one process sees. Yields (local indices, global batch size).
    """

    def __init__(self, n: int, batch_size: int, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.n, self.batch_size = n, batch_size

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:  # type: ignore[override]
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for batch in torch.split(order, self.batch_size):
            yield torch.tensor_split(batch, self.num_replicas)[self.rank], len(batch)


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


# --- the training loop (one rank) ----------------------------------------------------------------------------------


def make_optimizer(
    params: list[nn.Parameter], cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and schedule `bench.training.fit` builds, for `total_steps` steps."""
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
        )
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total_steps))
        if cfg.schedule == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    )
    return opt, sched


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
    model.to(device).train()
    sampler = GlobalBatchSampler(len(x), cfg.batch_size, num_replicas=world_size, rank=rank, seed=seed)
    opt, sched = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg, cfg.epochs * len(sampler))
    x, y = x.to(device), y.to(device)
    last = torch.zeros((), device=device)
    steps = 0
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        for idx, global_size in sampler:
            idx = idx.to(device)
            # Sum over this slice, scaled so that DDP's average over ranks is the mean over the global batch.
            loss = F.cross_entropy(model(x[idx]), y[idx], reduction="sum") * (world_size / global_size)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last, steps = loss.detach(), steps + 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    final = last / world_size
    if world_size > 1:
        dist.all_reduce(final)
    model.eval()
    return {"train_seconds": seconds, "steps": steps, "final_loss": float(final) if steps else float("nan")}


def load_worker_inputs(spec: dict[str, Any], config_cls: type) -> tuple[Any, nn.Module, dict[str, Any]]:
    """What every torchrun rank reads from the launcher's spec: its config, the model and the data blob."""
    cfg = parse_config(config_cls, spec["config"])
    model: nn.Module = torch.load(spec["model"], map_location="cpu", weights_only=False)
    blob = torch.load(spec["data"], map_location="cpu", weights_only=True)
    return cfg, model, blob


def ddp_worker(spec: dict[str, Any]) -> None:
    """A torchrun rank of `ddp` (called by `bench.recipes.dist_worker`)."""
    from torch.nn.parallel import DistributedDataParallel

    rank, world, device = init_process_group(spec)
    try:
        cfg, model, data = load_worker_inputs(spec, DDPConfig)
        if has_batchnorm(model) and world > 1:
            # A group of its own: the statistics' all_reduce (also in backward) never interleaves with DDP's buckets.
            bn_group = dist.new_group(backend=spec["backend"])
            model = sync_batchnorm(model, spec["backend"], bn_group)
        model.to(device)
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        out = train_rank(ddp, data["x"], data["y"], cfg, seed=spec["seed"], device=device, rank=rank, world_size=world)
        if rank == 0:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, spec["state"])
            Path(spec["result"]).write_text(json.dumps(out))
        dist.barrier()
    finally:
        dist.destroy_process_group()


# --- the recipe ----------------------------------------------------------------------------------------------------


@RECIPES.register("ddp", config=DDPConfig)
def ddp(model: nn.Module, data: Any, cfg: DDPConfig, *, seed: int, device: str) -> TrainCost:
    """Data-parallel cross-entropy training on `world_size` torchrun processes (DDP; SyncBatchNorm for BatchNorm)."""
    backend = resolve_backend(cfg.backend, device, cfg.world_size)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        work = Path(tmp)
        spec = {
            "kind": "ddp",
            "config": dataclasses.asdict(cfg),
            "seed": seed,
            "device": device,
            "backend": backend,
            "model": str(work / "model.pt"),
            "data": str(work / "data.pt"),
            "state": str(work / "state.pt"),
            "result": str(work / "result.json"),
        }
        torch.save(model.cpu(), spec["model"])
        torch.save({"x": data.x_train.cpu(), "y": data.y_train.cpu()}, spec["data"])
        torchrun(cfg.world_size, spec, work, what="ddp", timeout_s=cfg.timeout_s)
        model.load_state_dict(torch.load(spec["state"], map_location="cpu", weights_only=True))
        result = json.loads(Path(spec["result"]).read_text())
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
    return TrainCost(seconds, cfg.epochs, seen, seen / seconds if seconds > 0 else 0.0, result["final_loss"], extra)
