"""Splitting a suite's cells into N shards for `bench run --shard I/N` (bench.matrix.select_shard calls `select`).

Shards usually run on different machines with separate stage caches, so the split keeps together the cells that
share work: a group is every cell of one (dataset, model, recipe), i.e. one training; the cells of one artifact
(compression x runtime of that training) and all of its attack cells are then in one shard too, as is the baseline
evaluation (`none` on `eager`) that its compressed cells are judged against.

Cost model (arbitrary units, roughly one epoch of training of a small model each; only the ratios matter):

- training: `TRAIN_EPOCH` x the recipe's epochs (`epochs`; `rounds` x `local_epochs` for fedavg; 1 when the recipe
  gives none, e.g. `none`), x (1 + `steps`) when the recipe attacks every batch (`pgd_at`, `trades`);
- each distinct artifact: `ARTIFACT` (compress, export, a fresh measurement process), plus `TRAIN_EPOCH` per
  fine-tuning epoch a compression step declares (`finetune_epochs`, `epochs` of `kd` / `qat`);
- each attack cell: `ATTACK` x (1 + 1 if it attacks (has an `eps`) + `steps` x `restarts` / 10 + `queries` / 100);
  `worst_case` is the sum over its members;
- a skipped cell costs nothing, and a group or artifact whose cells are all skipped costs nothing. Only skips that
  the plugins' declared capabilities decide (a dtype a runtime has no kernels for on the device) count: a cell
  skipped because this machine lacks something (an ONNX Runtime provider) costs as if it ran, so every machine
  that runs the suite on the same device computes the same split.

Assignment: groups go, largest cost first, to the least-loaded shard (ties: fewer groups, then the lower shard
index; equal costs: suite order), so the split depends only on the suite and the device, never on hash seeds or
the machine. With fewer groups than shards, the costliest group that has several artifacts is split in two
(artifacts balanced by cost, each part paying the training again) until there are as many parts as shards or no
part has two artifacts left; an artifact is never split. A shard can therefore be empty (a suite with fewer
artifacts than shards): it still writes a valid run directory with 0 cells. Each shard lists its cells in suite
order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

TRAIN_EPOCH = 1.0  # one epoch of training
ARTIFACT = 4.0  # compress + export + measure in a fresh process, for one artifact
ATTACK = 0.5  # one cell's evaluation with attack `none` (a clean pass over the eval split)

CAPABILITY_DEVICES = ("cpu", "cuda")  # the devices a capability skip reason can name


def _num(config: Any, name: str, default: float) -> float:
    value = getattr(config, name, None)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def training_cost(recipe: Any) -> float:
    """The cost of one training with this recipe choice (see the module's docstring)."""
    cfg = recipe.config
    if hasattr(cfg, "epochs"):
        epochs = _num(cfg, "epochs", 1.0)
    elif hasattr(cfg, "rounds"):
        epochs = _num(cfg, "rounds", 1.0) * _num(cfg, "local_epochs", 1.0)
    else:
        epochs = 1.0
    return TRAIN_EPOCH * epochs * (1.0 + _num(cfg, "steps", 0.0))


def artifact_cost(compression: Any) -> float:
    """One artifact: compress, export and measure, plus the fine-tuning its compression steps declare."""
    finetune = 0.0
    for step in compression.chain:
        finetune += _num(step.config, "finetune_epochs", 0.0) + _num(step.config, "epochs", 0.0)
    return ARTIFACT + TRAIN_EPOCH * finetune


def _attack_work(config: Any) -> float:
    members = getattr(config, "members", None)
    if isinstance(members, list):  # worst_case: [(name, config), ...]
        return sum(_attack_work(member) for _, member in members)
    work = 1.0 + (1.0 if hasattr(config, "eps") else 0.0)
    work += _num(config, "steps", 0.0) * _num(config, "restarts", 1.0) / 10
    return work + _num(config, "queries", 0.0) / 100


def attack_cost(attack: Any) -> float:
    """One attack cell's evaluation (clean pass, attack, baseline comparison)."""
    return ATTACK * _attack_work(attack.config)


def is_free(cell: Any) -> bool:
    """A cell skipped for a reason the plugins' capabilities decide (the same on every machine for a device)."""
    if not cell.skip_reason:
        return False
    from bench.plugins import registry

    runtime_cls = registry("runtime").get(cell.runtime.name).obj
    dtype = "fp32"
    for step in cell.compression.chain:
        dtype = registry("compression").get(step.name).capabilities.get("dtype", dtype)
    return any(cell.skip_reason == runtime_cls.unsupported(dtype, device) for device in CAPABILITY_DEVICES)


def group_key(cell: Any) -> tuple[str, str, str]:
    """What the cells of one group share, and one training is keyed by: (dataset, model, recipe) labels."""
    return (cell.dataset.label, cell.model.label, cell.recipe.label)


def groups_of(cells: Sequence[Any]) -> list[list[Any]]:
    """Cells that share a trained model (dataset, model, recipe), in suite order: each group's artifacts are
    measured together, interleaved; both executors run a suite group by group."""
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for cell in cells:
        groups.setdefault(group_key(cell), []).append(cell)
    return list(groups.values())


def artifact_key(cell: Any) -> tuple[str, str, str, str, str]:
    return (*group_key(cell), cell.compression.label, cell.runtime.label)


def cost_of(cells: Sequence[Any]) -> float:
    """What a shard that runs exactly `cells` with its own cache pays: each training and each artifact once, each
    attack cell once; skipped cells nothing."""
    running = [c for c in cells if not is_free(c)]
    trainings = {group_key(c): c.recipe for c in running}
    artifacts = {artifact_key(c): c.compression for c in running}
    return (
        sum(training_cost(r) for r in trainings.values())
        + sum(artifact_cost(c) for c in artifacts.values())
        + sum(attack_cost(c.attack) for c in running)
    )


@dataclasses.dataclass
class _Part:
    """A group, or part of one: whole artifacts (lists of cell indices into the suite's cells), in suite order."""

    train: float
    artifacts: list[tuple[float, list[int]]]  # (cost of the artifact and its cells, the cells' indices)

    @property
    def order(self) -> int:
        return self.artifacts[0][1][0]

    @property
    def cost(self) -> float:
        work = sum(cost for cost, _ in self.artifacts)
        return work + (self.train if work > 0 else 0.0)

    def split(self) -> tuple[_Part, _Part]:
        """Two parts with the artifacts balanced by cost (largest first to the lighter part), each in suite order."""
        halves: tuple[list[tuple[float, list[int]]], list[tuple[float, list[int]]]] = ([], [])
        loads = [0.0, 0.0]
        for cost, cells in sorted(self.artifacts, key=lambda a: (-a[0], a[1][0])):
            side = 0 if loads[0] <= loads[1] else 1
            halves[side].append((cost, cells))
            loads[side] += cost
        first, second = (_Part(self.train, sorted(h, key=lambda a: a[1][0])) for h in halves)
        return first, second


def _parts(cells: Sequence[Any]) -> list[_Part]:
    """One part per (dataset, model, recipe) group, in the order of their first cells."""
    groups: dict[tuple[str, ...], dict[tuple[str, ...], list[int]]] = {}
    for i, cell in enumerate(cells):
        groups.setdefault(group_key(cell), {}).setdefault(artifact_key(cell), []).append(i)
    parts = []
    for artifacts in groups.values():
        first = cells[next(iter(artifacts.values()))[0]]
        priced = []
        for indices in artifacts.values():
            running = [cells[i] for i in indices if not is_free(cells[i])]
            cost = (
                (artifact_cost(running[0].compression) + sum(attack_cost(c.attack) for c in running))
                if running
                else 0.0
            )
            priced.append((cost, indices))
        parts.append(_Part(training_cost(first.recipe), priced))
    return parts


def assign(cells: Sequence[Any], count: int) -> list[list[int]]:
    """Per shard (index 0 is shard 1), the indices of its cells in suite order; every cell in exactly one."""
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    parts = _parts(cells)
    while len(parts) < count:
        splittable = [p for p in parts if len(p.artifacts) > 1]
        if not splittable:
            break
        largest = min(splittable, key=lambda p: (-p.cost, p.order))
        parts.remove(largest)
        parts.extend(largest.split())
    loads = [0.0] * count
    held = [0] * count
    shards: list[list[int]] = [[] for _ in range(count)]
    for part in sorted(parts, key=lambda p: (-p.cost, p.order)):
        target = min(range(count), key=lambda s: (loads[s], held[s], s))
        loads[target] += part.cost
        held[target] += 1
        shards[target].extend(i for _, indices in part.artifacts for i in indices)
    return [sorted(s) for s in shards]


def select(cells: Sequence[Any], index: int, count: int) -> list[Any]:
    """Shard `index` of `count` (1-based): its cells, in suite order."""
    if not 1 <= index <= count:
        raise ValueError(f"shard index must be in 1..{count}, got {index}")
    return [cells[i] for i in assign(cells, count)[index - 1]]
