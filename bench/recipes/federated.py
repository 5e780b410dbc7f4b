r"""`fedavg`: Federated Averaging (McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, arXiv:1602.05629).

Each round every client starts from the global model, runs a registered recipe (`local_recipe`: `standard`,
`pgd_at`, `fgsm_augment`, ...) for `local_epochs` on its own shard with fedavg's optimiser settings (a fresh
optimiser each round), and sends its update (local minus global weights, every state_dict entry, BatchNorm
statistics included). The server adds the average of the updates weighted by the clients' sample counts. With one
local full-batch step per round this is FedSGD, which is centralised full-batch gradient descent for any number of
clients (the weighted average of the shards' mean gradients is the mean gradient of the union).

Splits of the train set: `iid`, a seeded random partition into near-equal shards; `dirichlet`, the label-skew
construction of Hsu et al. 2019 (arXiv:1909.06335) and Yurochkin et al. 2019: for each class, the shares of the
clients are drawn from Dir(alpha), seeded; draws that leave a client with fewer than min(10, N / clients) samples
are redrawn (up to 100 times). Small alpha gives clients few, dominant classes.

Update compression (uplink; the downlink, the dense global model, is counted as received): `topk` keeps the
`topk_ratio` largest-magnitude entries of each tensor (float32 values + int32 indices), `int8` quantises each
tensor symmetrically (int8 values + one float32 scale). No error feedback: what compression drops is lost.

After each round the global model's accuracy on the calibration split (held out from training and from the eval
split; at most ROUND_EVAL_SAMPLES samples, one forward pass in eval mode that changes neither the weights nor the
random streams) is recorded as `round_accuracy`, with the bytes each client sent and received in that round. With
`round_attack` (PGD parameters, e.g. `{eps: 0.3, alpha: 0.01, steps: 10}`) the same samples are also attacked, in
eval mode with a generator of its own, and `round_robust_accuracy` recorded. `keep: best` ends with the global model
of the round that scored highest there (robust accuracy where `round_attack` is set, else clean; the earliest on a
tie) instead of the last round's: the choice is made on the calibration split, never on the eval split the cell is
scored on, and the record names it (`kept_round`, counted from 1).

Modes: `simulate` runs the clients in turn in this process; `torchrun` runs them on `processes` torch.distributed
ranks (gloo; default one per client, rank r runs clients r, r + P, ...) and sums the weighted updates with
all_reduce. Each client's training is seeded by (seed, round, client) alone, so both modes give the same weights.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from bench.attacks import ATTACKS, Attack
from bench.config import check_range, config_fields, parse_config
from bench.errors import ConfigError, UnknownNameError
from bench.launch import load_worker_inputs, process_group, run_workers, write_outputs
from bench.recipes import RECIPES
from bench.training import TrainCost
from bench.types import DataSplits

OPTIM_FIELDS = ("batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule")
DIRICHLET_TRIES = 100
INDEX_BYTES = 4  # a top-k index is sent as int32
ROUND_EVAL_SAMPLES = 512  # calibration samples the global model is scored on after each round

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sum over ranks (identity when simulating)

# --- config --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FedAvgConfig:
    """Federation, split, local step, uplink compression and the clients' optimiser."""

    clients: int = 4
    rounds: int = 5
    local_epochs: int = 1  # epochs of the local recipe on the client's shard per round
    split: Literal["iid", "dirichlet"] = "iid"
    dirichlet_alpha: float = 0.5  # concentration of the per-class Dir(alpha) over clients; smaller: more skew
    local_recipe: str = "standard"  # any registered recipe that trains in this process (not ddp, not fedavg)
    local_params: dict[str, Any] = dataclasses.field(default_factory=dict)  # its own parameters, e.g. {eps: 0.1}
    update_compression: Literal["none", "topk", "int8"] = "none"
    topk_ratio: float = 0.1  # fraction of each tensor's entries top-k sends
    mode: Literal["simulate", "torchrun"] = "simulate"
    processes: int | None = None  # torchrun ranks; None: one per client (ignored when simulating)
    timeout_s: float | None = None  # wall-clock limit of the torchrun launch; None: no limit
    # The clients' optimiser, fresh each round (McMahan et al.: plain SGD at a constant rate).
    batch_size: int = 64
    lr: float = 0.05
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.0
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "constant"  # within each local run
    # the global model after each round: PGD parameters to also score its robust accuracy on the calibration split,
    # and which round's model the recipe ends with (`best`: the highest score there)
    round_attack: dict[str, Any] | None = None
    keep: Literal["last", "best"] = "last"

    def __post_init__(self) -> None:
        check_range("clients", self.clients, lo=1)
        check_range("rounds", self.rounds, lo=1)
        check_range("local_epochs", self.local_epochs, lo=1)
        check_range("dirichlet_alpha", self.dirichlet_alpha, lo=0, lo_open=True)
        check_range("topk_ratio", self.topk_ratio, lo=0, hi=1, lo_open=True)
        check_range("processes", self.processes, lo=1, hi=self.clients)
        check_range("timeout_s", self.timeout_s, lo=0, lo_open=True)
        check_range("batch_size", self.batch_size, lo=1)
        check_range("lr", self.lr, lo=0, lo_open=True)
        check_range("momentum", self.momentum, lo=0, hi=1, hi_open=True)
        check_range("weight_decay", self.weight_decay, lo=0)
        self.local_config()  # an unknown recipe or a bad local parameter fails when the suite is parsed
        self.round_pgd()

    def round_pgd(self) -> Attack | None:
        """The attack scoring the global model after each round (`round_attack`), or None."""
        if self.round_attack is None:
            return None
        if not isinstance(self.round_attack, dict):
            raise ConfigError("round_attack", "expected PGD parameters, e.g. {eps: 0.3, alpha: 0.01, steps: 10}")
        entry = ATTACKS.get("pgd")
        try:
            return entry.obj(parse_config(entry.config_cls, self.round_attack))
        except ConfigError as exc:
            raise ConfigError(f"round_attack.{exc.field}" if exc.field else "round_attack", str(exc)) from None

    def local_config(self) -> Any:
        """The local recipe's config: fedavg's optimiser, `local_epochs` as its epochs, then `local_params`."""
        try:
            entry = RECIPES.get(self.local_recipe)
        except UnknownNameError as exc:
            raise ConfigError("local_recipe", str(exc)) from None
        if entry.capabilities.get("launches_workers"):  # a client is one process: it cannot start a torchrun job
            raise ConfigError("local_recipe", f"'{self.local_recipe}' launches worker processes: not a local step")
        clash = sorted(set(self.local_params) & {*OPTIM_FIELDS, "epochs"})
        if clash:
            raise ConfigError("local_params", f"set {', '.join(clash)} on fedavg itself (local_epochs for epochs)")
        fields = config_fields(entry.config_cls)
        params = {k: getattr(self, k) for k in OPTIM_FIELDS if k in fields}
        if "epochs" in fields:
            params["epochs"] = self.local_epochs
        try:
            return parse_config(entry.config_cls, {**params, **self.local_params})
        except ConfigError as exc:
            field = exc.field if exc.field in params else f"local_params.{exc.field}"
            raise ConfigError(field, f"local recipe '{self.local_recipe}': {exc}") from None


# --- splitting -----------------------------------------------------------------------------------------------------


def client_shards(
    y: torch.Tensor, clients: int, split: str, alpha: float, seed: int, num_classes: int
) -> list[torch.Tensor]:
    """Indices of the train samples of each client (sorted); see the module docstring for the two splits."""
    n = len(y)
    if split == "iid":
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return [part.sort().values for part in torch.tensor_split(order, clients)]
    labels = y.cpu().numpy()
    rng = np.random.default_rng(seed)
    min_size = min(10, n // clients)
    for _ in range(DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for c in range(num_classes):
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        shards = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(s) for s in shards) >= min_size:
            break
    return [torch.from_numpy(s.astype(np.int64)) for s in shards]


def label_histogram(y: torch.Tensor, shards: Sequence[torch.Tensor], num_classes: int) -> list[list[int]]:
    return [torch.bincount(y[s], minlength=num_classes).tolist() for s in shards]


# --- update compression --------------------------------------------------------------------------------------------


def compress_update(update: torch.Tensor, method: str, ratio: float) -> tuple[torch.Tensor, int]:
    """(what the server decodes, bytes on the wire) for one floating-point update tensor."""
    n, size = update.numel(), update.element_size()
    if method == "topk" and n > 0:
        k = max(1, math.ceil(ratio * n))
        flat = update.flatten()
        idx = flat.abs().topk(k, sorted=False).indices
        out = torch.zeros_like(flat)
        out[idx] = flat[idx]
        return out.view_as(update), k * (size + INDEX_BYTES)
    if method == "int8" and n > 0:
        scale = update.abs().max() / 127
        if scale == 0:
            return torch.zeros_like(update), n + 4
        q = torch.round(update / scale).clamp_(-127, 127).to(torch.int8)
        return q.to(update.dtype) * scale, n + 4  # int8 values + a float32 scale
    return update, n * size


# --- the rounds (shared by both modes) -----------------------------------------------------------------------------


@torch.no_grad()
def held_out_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> float | None:
    """Accuracy of `model` on the first ROUND_EVAL_SAMPLES of (x, y) in eval mode, its training flag restored; None
    without samples or class-index labels."""
    if len(x) == 0 or y.ndim != 1 or y.dtype.is_floating_point:
        return None
    was_training = model.training
    model.eval()
    try:
        logits = model(x[:ROUND_EVAL_SAMPLES].to(device))
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        return None
    return float((logits.argmax(1).cpu() == y[:ROUND_EVAL_SAMPLES].cpu()).float().mean())


def held_out_robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, seed: int, device: str
) -> float | None:
    """Robust accuracy of `model` under `attack` on the first ROUND_EVAL_SAMPLES of (x, y), crafted and scored in
    eval mode with a generator of its own (the training's random streams are untouched); None as held_out_accuracy."""
    if len(x) == 0 or y.ndim != 1 or y.dtype.is_floating_point:
        return None
    x, y = x[:ROUND_EVAL_SAMPLES].to(device), y[:ROUND_EVAL_SAMPLES].to(device)
    was_training = model.training
    model.eval()
    try:
        x_adv = attack.perturb(model, x, y, torch.Generator(device="cpu").manual_seed(seed)).detach()
        with torch.no_grad():
            pred = model(x_adv).argmax(1)
    finally:
        model.train(was_training)
    return float((pred == y).float().mean())


def _client_seed(seed: int, rnd: int, client: int) -> int:
    return int(np.random.SeedSequence([seed, rnd, client]).generate_state(1, np.uint64)[0] >> 1)


def run_rounds(
    model: nn.Module,
    data: DataSplits,
    shards: Sequence[torch.Tensor],
    cfg: FedAvgConfig,
    *,
    seed: int,
    device: str,
    my_clients: Sequence[int],
    reduce: Reduce,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train `model` (the global model, in place) for `cfg.rounds` rounds, running the clients in `my_clients`.

    `reduce` sums a tensor over all ranks (identity in one process); every rank calls it the same number of times.
    Returns per-client bytes sent / received (in total and per round) and samples seen, the weighted mean local
    loss of each round and, where `evaluate`, the global model's accuracy on the calibration split after each round.
    """
    entry = RECIPES.get(cfg.local_recipe)
    local_cfg = cfg.local_config()
    model.to(device)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dense_bytes = sum(v.numel() * v.element_size() for v in state.values())
    counts = [len(s) for s in shards]
    total = sum(counts)
    # [round][client]: summed over rounds for the totals
    sent, received = ([[0] * cfg.clients for _ in range(cfg.rounds)] for _ in range(2))
    seen = [0] * cfg.clients
    round_loss: list[float] = []
    round_accuracy: list[float | None] = []
    round_robust: list[float | None] = []
    attack = cfg.round_pgd()
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (score, round, global state) for keep: best
    fork_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    start = time.perf_counter()
    for rnd in range(cfg.rounds):
        acc = {k: torch.zeros(v.shape, dtype=v.dtype if v.is_floating_point() else torch.float32, device=device)
               for k, v in state.items()}  # fmt: skip
        loss = torch.zeros(1, dtype=torch.float64)
        for k in my_clients:
            if counts[k] == 0:
                continue  # nothing to train on: no update, no weight
            weight = counts[k] / total
            shard = dataclasses.replace(data, x_train=data.x_train[shards[k]], y_train=data.y_train[shards[k]])
            client = copy.deepcopy(model)
            client_seed = _client_seed(seed, rnd, k)
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(client_seed)  # dropout and the like: the same in either mode
                cost = entry.obj(client, shard, local_cfg, seed=client_seed, device=device)
            local = client.state_dict()
            for key, glob in state.items():
                delta = local[key].detach() - glob
                if glob.is_floating_point():
                    decoded, nbytes = compress_update(delta, cfg.update_compression, cfg.topk_ratio)
                else:  # integer buffers (BatchNorm's batch counter) travel as they are
                    decoded, nbytes = delta.to(torch.float32), delta.numel() * delta.element_size()
                acc[key] += decoded * weight  # rounded product, then the sum: as all_reduce adds ranks
                sent[rnd][k] += nbytes
            received[rnd][k] += dense_bytes
            seen[k] += cost.samples_seen
            if math.isfinite(cost.final_loss):
                loss += weight * cost.final_loss
        flat = reduce(torch.cat([a.flatten().to(torch.float32) for a in acc.values()]))
        for (key, glob), part in zip(state.items(), torch.split(flat, [a.numel() for a in acc.values()]), strict=True):
            step = part.view(glob.shape).to(device)
            state[key] = glob + step.to(glob.dtype) if glob.is_floating_point() else glob + step.round().to(glob.dtype)
        model.load_state_dict(state)
        round_loss.append(float(reduce(loss)))
        if evaluate:
            round_accuracy.append(held_out_accuracy(model, data.x_calib, data.y_calib, device))
            if attack is not None:
                robust = held_out_robust_accuracy(model, data.x_calib, data.y_calib, attack, seed, device)
                round_robust.append(robust)
            score = round_robust[-1] if attack is not None else round_accuracy[-1]
            if cfg.keep == "best" and score is not None and (best is None or score > best[0]):
                best = (score, rnd, {k: v.clone() for k, v in state.items()})
    seconds = time.perf_counter() - start
    kept = cfg.rounds - 1
    if best is not None:
        kept = best[1]
        model.load_state_dict(best[2])
    round_sent, round_received = (reduce(torch.tensor(m, dtype=torch.int64)).tolist() for m in (sent, received))
    seen = reduce(torch.tensor(seen, dtype=torch.int64)).tolist()
    model.eval()
    return {
        "bytes_sent": [sum(column) for column in zip(*round_sent, strict=True)],
        "bytes_received": [sum(column) for column in zip(*round_received, strict=True)],
        "round_bytes_sent": round_sent,
        "round_bytes_received": round_received,
        "samples_seen": seen,
        "round_loss": round_loss,
        "round_accuracy": round_accuracy,
        "round_robust_accuracy": round_robust,
        "kept_round": kept + 1,
        "dense_update_bytes": dense_bytes,
        "train_seconds": seconds,
    }


# --- torchrun mode -------------------------------------------------------------------------------------------------


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    out = tensor.detach().cpu().clone()
    dist.all_reduce(out)
    return out


def fedavg_worker(spec: dict[str, Any]) -> None:
    """A torchrun rank of `fedavg` (the spec's `worker`, run by `bench.launch`): the clients rank, rank + P, ..."""
    with process_group(spec) as (rank, world, device):
        cfg, model, blob = load_worker_inputs(spec, FedAvgConfig)
        x, y = blob["x"], blob["y"]
        data = DataSplits(
            name=blob["name"],
            x_train=x,
            y_train=y,
            x_calib=blob["x_calib"],
            y_calib=blob["y_calib"],
            x_eval=x[:0],
            y_eval=y[:0],
            num_classes=blob["num_classes"],
            in_shape=tuple(blob["in_shape"]),
            mean=tuple(blob["mean"]),
            std=tuple(blob["std"]),
        )
        clients = range(rank, cfg.clients, world)
        out = run_rounds(
            model,
            data,
            blob["shards"],
            cfg,
            seed=spec["seed"],
            device=str(device),
            my_clients=clients,
            reduce=_all_reduce,
            evaluate=rank == 0,  # every rank holds the same global model; rank 0 writes the outputs
        )
        if rank == 0:
            write_outputs(spec, model, out)


def _torchrun_rounds(
    model: nn.Module, data: DataSplits, shards: list[torch.Tensor], cfg: FedAvgConfig, *, seed: int, device: str
) -> dict[str, Any]:
    blob = {
        "x": data.x_train.cpu(),
        "y": data.y_train.cpu(),
        "x_calib": data.x_calib[:ROUND_EVAL_SAMPLES].cpu(),
        "y_calib": data.y_calib[:ROUND_EVAL_SAMPLES].cpu(),
        "shards": shards,
        "name": data.name,
        "num_classes": data.num_classes,
        "in_shape": list(data.in_shape),
        "mean": list(data.mean),
        "std": list(data.std),
    }
    return run_workers(
        f"{__name__}:fedavg_worker",
        cfg.processes or cfg.clients,
        model,
        blob,
        cfg,
        seed=seed,
        device=device,
        backend="gloo",  # the updates are summed on the CPU, whatever device the clients train on
        what="fedavg",
        timeout_s=cfg.timeout_s,
    )


# --- the recipe ----------------------------------------------------------------------------------------------------


@RECIPES.register("fedavg", config=FedAvgConfig, launches_workers=True)
def fedavg(model: nn.Module, data: DataSplits, cfg: FedAvgConfig, *, seed: int, device: str) -> TrainCost:
    """Federated Averaging over `clients` shards of the train split (McMahan et al. 2017)."""
    start = time.perf_counter()
    shards = client_shards(data.y_train, cfg.clients, cfg.split, cfg.dirichlet_alpha, seed, data.num_classes)
    if cfg.mode == "simulate":
        processes = 1
        out = run_rounds(
            model, data, shards, cfg, seed=seed, device=device, my_clients=range(cfg.clients), reduce=lambda t: t
        )
    else:
        processes = cfg.processes or cfg.clients
        out = _torchrun_rounds(model, data, shards, cfg, seed=seed, device=device)
    model.to(device).eval()
    seconds = time.perf_counter() - start
    participations = cfg.rounds * sum(1 for s in shards if len(s) > 0)
    dense_total = participations * out["dense_update_bytes"]
    seen = sum(out["samples_seen"])
    extra = {
        "mode": cfg.mode,
        "launcher": "torchrun" if cfg.mode == "torchrun" else "none",
        "backend": "gloo" if cfg.mode == "torchrun" else None,
        "processes": processes,
        "clients": cfg.clients,
        "rounds": cfg.rounds,
        "local_recipe": cfg.local_recipe,
        "split": cfg.split,
        "client_samples": [len(s) for s in shards],
        "label_histogram": label_histogram(data.y_train, shards, data.num_classes),
        "update_compression": cfg.update_compression,
        "bytes_sent": out["bytes_sent"],  # per client, summed over rounds (uplink: the compressed updates)
        "bytes_received": out["bytes_received"],  # per client, summed over rounds (downlink: the dense model)
        "round_bytes_sent": out["round_bytes_sent"],  # [round][client]
        "round_bytes_received": out["round_bytes_received"],  # [round][client]
        "bytes_sent_total": sum(out["bytes_sent"]),
        "dense_update_bytes": out["dense_update_bytes"],  # one uncompressed update
        "compression_ratio": sum(out["bytes_sent"]) / dense_total if dense_total else float("nan"),
        "round_loss": [round(v, 6) for v in out["round_loss"]],  # weighted mean of the clients' last local loss
        # the global model after each round, on the calibration split (None without one)
        "round_accuracy": [None if a is None else round(a, 4) for a in out["round_accuracy"]],
        "round_accuracy_samples": min(len(data.y_calib), ROUND_EVAL_SAMPLES),
        "round_robust_accuracy": [None if a is None else round(a, 4) for a in out["round_robust_accuracy"]],
        "round_attack": cfg.round_attack,
        "keep": cfg.keep,
        "kept_round": out["kept_round"],  # the round whose global model the recipe ends with, from 1
        "train_seconds": round(out["train_seconds"], 4),  # the rounds alone (rank 0's, under torchrun)
    }
    final = out["round_loss"][-1] if out["round_loss"] else float("nan")
    return TrainCost(seconds, cfg.rounds * cfg.local_epochs, seen, seen / seconds if seconds > 0 else 0.0, final, extra)
