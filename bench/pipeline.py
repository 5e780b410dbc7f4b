"""The stages of a cell, each content-addressed and cached (docs/architecture.md):

    data -> train(model, recipe) -> compress(compression) -> export(runtime) -> measure(latency, memory, size)
                                                                        \\-> evaluate(attack) -> cell record

Cells that share a prefix share the stage: one training per (model, recipe, data, seed), one compression per
(trained model, compression), one export per (compressed model, runtime), one measurement per artifact. Every
stage executed or taken from the cache is appended to stages.jsonl with its cost, which is where the
training-time versus inference-time accounting comes from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from bench import jsonl
from bench.attacks import attack_kind
from bench.cache import StageCache, stage_key
from bench.compressions import Compressed
from bench.config import to_dict
from bench.datasets import load_dataset
from bench.errors import STAGE_NOTE
from bench.evaluate import evaluate
from bench.filehash import sha256_file
from bench.matrix import Cell
from bench.measure.latency import resolve_profile
from bench.measure.memory import PeakRSS
from bench.measure.schedule import MeasureJob, measure_interleaved
from bench.models import build_model, model_fingerprint
from bench.plugins import registry
from bench.registry import NoConfig
from bench.runtimes import Exported
from bench.suite import Choice, Suite
from bench.types import CompressContext, DataSplits, lowering_from_dict

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StageResult:
    kind: str
    key: str
    path: Path
    meta: dict[str, Any]
    cache_hit: bool
    value: Any = None  # the loaded object (model, predictor, ...), memoised for the cells that share it


class Pipeline:
    """Runs and caches the stages of a suite's cells; one instance per run."""

    def __init__(
        self,
        suite: Suite,
        cache: StageCache,
        stages_log: Path,
        device: str,
        threads: int,
        environment: dict[str, Any],
        remeasure: bool = False,
    ) -> None:
        self.suite = suite
        self.cache = cache
        self.stages_log = stages_log
        self.device = device
        self.threads = threads
        self.environment = environment
        self.remeasure = remeasure or suite.measurement.remeasure
        self.run_id = f"{time.time_ns()}-{os.getpid()}"  # makes `remeasure` keys unique to this run
        self._memo: dict[tuple[str, str], StageResult] = {}
        self._splits: dict[str, DataSplits] = {}
        self._evaluate_keys: dict[tuple[str, ...], str] = {}  # memo of evaluate_key
        self._sweeps: dict[str, list[tuple[float, Choice]]] | None = None  # eps sweeps of the suite's attacks
        self.current_cell: str | None = None
        self.node = platform.node()  # the machine that measures, recorded with its measurements
        # model label -> its checkpoint and source hashes as the driver computed them (bench.models.
        # model_fingerprint); empty: computed here. A worker's process may have loaded other modules of a user's
        # package than the driver's, which would hash the source differently: the driver's hashes key the run.
        self.fingerprints: dict[str, dict[str, str]] = {}

    # -- the generic stage: cache lookup, build in a staging folder, commit, log ------------------------------

    def _stage(
        self,
        kind: str,
        config: Any,
        inputs: list[str],
        build: Callable[[Path], dict[str, Any]],
        load: Callable[[Path, dict[str, Any]], Any] | None = None,
    ) -> StageResult:
        key = stage_key(kind, config, inputs)
        if (kind, key) in self._memo:
            return self._memo[(kind, key)]
        start = time.perf_counter()
        try:
            return self._run_stage(kind, key, build, load, start)
        except Exception as exc:  # the cell's one-line summary says which stage failed (bench.assemble)
            names = [v["name"] for v in config.values() if isinstance(v, dict) and "name" in v]
            exc.add_note(f"{STAGE_NOTE}{kind}" + (f" ({', '.join(map(str, names))})" if names else ""))
            raise

    def _run_stage(
        self,
        kind: str,
        key: str,
        build: Callable[[Path], dict[str, Any]],
        load: Callable[[Path, dict[str, Any]], Any] | None,
        start: float,
    ) -> StageResult:
        with PeakRSS() as peak:
            hit = self.cache.has(kind, key)
            if hit:
                path = self.cache.path(kind, key)
                meta = self.cache.meta(kind, key)
            else:
                staging = self.cache.staging(kind, key)
                meta = build(staging)
                meta.setdefault("seconds", time.perf_counter() - start)
                path = self.cache.commit(kind, key, staging, meta)
                meta = self.cache.meta(kind, key)  # another run's, when it committed the same stage first
            value = load(path, meta) if load else None
        seconds = meta["seconds"] if not hit else time.perf_counter() - start
        jsonl.append(
            self.stages_log,
            {
                "kind": kind,
                "key": key,
                "cache_hit": hit,
                "seconds": round(seconds, 6),
                "peak_memory_mb": round(peak.mb, 1),
                "cell_id": self.current_cell,
                "time": time.time(),
            },
        )
        result = StageResult(kind, key, path, meta, hit, value)
        self._memo[(kind, key)] = result
        return result

    # -- data -------------------------------------------------------------------------------------------------

    def use_datasets(self, splits: dict[str, DataSplits]) -> None:
        """Take data already loaded (by bench.preflight's checks) instead of loading it again; by dataset label."""
        self._splits.update(splits)

    def load_datasets(self, choices: list[Choice]) -> None:
        """Load each dataset once per run (raises BenchInputError for missing files before any cell runs)."""
        for choice in choices:
            if choice.label not in self._splits:
                self._splits[choice.label] = load_dataset(choice.name, choice.config, self.suite.seed)

    def data(self, choice: Choice) -> StageResult:
        self.load_datasets([choice])  # the fingerprint of the loaded splits keys every later stage
        splits = self._splits[choice.label]
        config = {"dataset": choice.record(), "seed": self.suite.seed, "fingerprint": splits.fingerprint()}

        def build(staging: Path) -> dict[str, Any]:
            torch.save({"x": splits.x_eval, "y": splits.y_eval}, staging / "eval.pt")
            return {
                "n_train": len(splits.x_train),
                "n_calib": len(splits.x_calib),
                "n_eval": len(splits.x_eval),
                "in_shape": list(splits.in_shape),
                "num_classes": splits.num_classes,
            }

        return self._stage("data", config, [], build, load=lambda path, meta: splits)

    # -- train ------------------------------------------------------------------------------------------------

    def train(self, cell: Cell, data: StageResult) -> StageResult:
        splits: DataSplits = data.value
        recipe_entry = registry("recipe").get(cell.recipe.name)

        def build(staging: Path) -> dict[str, Any]:
            torch.manual_seed(self.suite.seed)  # the same seed gives the same initial weights
            model = build_model(
                cell.model.name, cell.model.config, splits.num_classes, splits.in_shape, splits.mean, splits.std
            )
            with PeakRSS(include_children=True) as peak:
                cost = recipe_entry.obj(model, splits, cell.recipe.config, seed=self.suite.seed, device=self.device)
            model = model.cpu().eval()
            torch.save(model, staging / "model.pt")
            return {"cost": dataclasses.asdict(cost), "peak_memory_mb": peak.mb, "device": self.device}

        # the checkpoint's content, not its path, keys the stage: an overwritten file is a new model
        model = {k: v for k, v in cell.model.record().items() if k != "checkpoint"}
        fingerprint = self.fingerprints.get(cell.model.label)  # a Ray worker keys with the driver's (below)
        model.update(fingerprint if fingerprint is not None else model_fingerprint(cell.model.name, cell.model.config))
        config = {"model": model, "recipe": cell.recipe.record(), "device": self.device}
        return self._stage("train", config, [data.key], build, load=_load_module)

    # -- compress ---------------------------------------------------------------------------------------------

    def compress(self, cell: Cell, data: StageResult, trained: StageResult) -> StageResult:
        splits: DataSplits = data.value
        example = splits.x_eval[:1]

        def build(staging: Path) -> dict[str, Any]:
            model = _copy_module(trained.value)
            ctx = CompressContext(splits, self.suite.seed, self.device, example)
            steps, lowering = [], None
            for step in cell.compression.chain:
                entry = registry("compression").get(step.name)
                start = time.perf_counter()
                out: Compressed = entry.obj(model, step.config, ctx)
                steps.append(
                    {"name": step.name, "label": step.label, "seconds": time.perf_counter() - start, **out.meta}
                )
                model, lowering = out.model.cpu().eval(), out.lowering or lowering
            macs, params = tp.utils.count_ops_and_params(model, example)
            torch.save(model, staging / "model.pt")
            return {
                "steps": steps,
                "lowering": to_dict(lowering) if lowering else None,
                "params": int(params),
                "macs": int(macs),
                "compress_s": sum(s["seconds"] for s in steps),
            }

        def load(path: Path, meta: dict[str, Any]) -> Compressed:
            return Compressed(_load_module(path, meta), lowering_from_dict(meta.get("lowering")), meta)

        return self._stage("compress", {"compression": cell.compression.record()}, [trained.key, data.key], build, load)

    # -- export -----------------------------------------------------------------------------------------------

    def export(self, cell: Cell, data: StageResult, compressed: StageResult) -> StageResult:
        runtime = registry("runtime").get(cell.runtime.name).obj(cell.runtime.config)
        splits: DataSplits = data.value
        ctx = CompressContext(splits, self.suite.seed, self.device, splits.x_eval[:2])

        def build(staging: Path) -> dict[str, Any]:
            exported = runtime.export(_copy_module(compressed.value.model), compressed.value.lowering, ctx, staging)
            files = {name: (staging / name).stat().st_size for name in exported.files}
            return {
                "exported": dataclasses.asdict(exported),
                "files": files,
                "size_bytes": sum(files.values()),
                "sha256": sha256_file(staging / exported.main_file),
            }

        def load(path: Path, meta: dict[str, Any]) -> Any:
            exported = Exported(**meta["exported"])
            return runtime.predictor(path, exported, self.device, self.threads, meta["sha256"])

        return self._stage("export", {"runtime": cell.runtime.record()}, [compressed.key], build, load)

    # -- measure ----------------------------------------------------------------------------------------------

    def _measure_plan(self, cell: Cell, data: StageResult, exported: StageResult) -> tuple[dict[str, Any], Any]:
        """(cache config, worker spec) of one artifact's measurement."""
        m = self.suite.measurement
        spec = {
            "session": exported.meta["exported"]["session"],  # the opener its runtime named at export
            "path": str(exported.path / exported.meta["exported"]["main_file"]),
            "device": self.device,
            "threads": self.threads,
            "batch_sizes": m.batch_sizes,
            "input_shape": data.meta["in_shape"],
            "profile": dataclasses.asdict(resolve_profile(m)),
            "seed": self.suite.seed,
            "memory": m.memory,
            "options": registry("runtime").get(cell.runtime.name).obj(cell.runtime.config).session_options(),
            "sha256": exported.meta["sha256"],
        }
        return self.measure_config(), spec

    def measure_config(self) -> dict[str, Any]:
        """What keys a measure stage beside its artifact: the settings, this machine, and the run when remeasuring."""
        from bench.env import machine_key

        settings = {k: v for k, v in to_dict(self.suite.measurement).items() if k != "remeasure"}
        config: dict[str, Any] = {"measurement": settings, "machine": machine_key(self.environment, self.threads)}
        if self.remeasure:  # a key of this run alone: measured afresh even when the artifact is cached
            config["run"] = self.run_id
        return config

    def measure_many(
        self, items: list[tuple[Cell, StageResult, StageResult]], timeout_s: float | None = None
    ) -> list[StageResult | Exception]:
        """The measure stages of several cells' artifacts (cell, data, exported): the artifacts not in the cache are
        measured together, interleaved, each in several processes (bench.measure.schedule); per item, its stage
        result, or the exception that stopped its artifact's measurement."""
        plans = []
        jobs: dict[str, MeasureJob] = {}
        for cell, data, exported in items:
            config, spec = self._measure_plan(cell, data, exported)
            key = stage_key("measure", config, [exported.key])
            plans.append((cell, config, exported, key))
            if ("measure", key) not in self._memo and not self.cache.has("measure", key):
                jobs.setdefault(key, MeasureJob(key, spec))
        outcomes = measure_interleaved(list(jobs.values()), self.threads, timeout_s)
        results: list[StageResult | Exception] = []
        for cell, config, exported, key in plans:
            outcome = outcomes.get(key)
            if isinstance(outcome, Exception):
                results.append(outcome)
                continue

            def build(staging: Path, outcome: dict[str, Any] | None = outcome) -> dict[str, Any]:
                assert outcome is not None  # a key not in the cache was measured above
                result = dict(outcome)
                (staging / "samples.json").write_text(json.dumps(result.pop("samples_ms")))
                meta = {
                    "result": result,
                    "profile": self.suite.measurement.profile,
                    "threads": self.threads,
                    "node": self.node,
                }
                return meta | {"seconds": result["seconds"]}  # the processes' time, not this commit's

            self.current_cell = cell.cell_id
            results.append(self._stage("measure", config, [exported.key], build))
        return results

    def measure(self, cell: Cell, data: StageResult, exported: StageResult) -> StageResult:
        """One cell's measure stage (bench.measure.schedule runs its processes)."""
        (result,) = self.measure_many([(cell, data, exported)])
        if isinstance(result, Exception):
            raise result
        return result

    # -- a cell's chain -------------------------------------------------------------------------------------------

    def chain(self, cell: Cell, last: str = "evaluate") -> dict[str, StageResult]:
        """The cell's stages data -> train -> compress -> export -> evaluate, in order, up to `last`, by kind:
        the one sequence the local runner, the Ray workers and the key planner (bench.stage_graph) all follow."""
        out = {"data": self.data(cell.dataset)}
        steps = (
            ("train", lambda: self.train(cell, out["data"])),
            ("compress", lambda: self.compress(cell, out["data"], out["train"])),
            ("export", lambda: self.export(cell, out["data"], out["compress"])),
            ("evaluate", lambda: self.evaluate(cell, out["data"], out["compress"], out["export"])),
        )
        for kind, run in steps:
            if last in out:
                break
            out[kind] = run()
        return out

    # -- baseline ---------------------------------------------------------------------------------------------

    def baseline(self, cell: Cell, data: StageResult, trained: StageResult) -> StageResult:
        """The uncompressed eager model's evaluation under the cell's attack (shared by every variant)."""
        base = dataclasses.replace(cell, compression=BASELINE_COMPRESSION, runtime=BASELINE_RUNTIME)
        compressed = self.compress(base, data, trained)
        exported = self.export(base, data, compressed)
        return self.evaluate(base, data, compressed, exported)

    # -- evaluate ---------------------------------------------------------------------------------------------

    def evaluate(self, cell: Cell, data: StageResult, compressed: StageResult, exported: StageResult) -> StageResult:
        """The cell's attack on the exported artifact. In an eps sweep (`previous_eps`), the stage continues the same
        attack's stage at the next-smaller eps on the same artifact: that stage's key is among this one's inputs, and
        it is taken from the cache (or run first) only when this stage has to be built."""
        attack = registry("attack").get(cell.attack.name).obj(cell.attack.config)
        before = self.previous_eps(cell)

        def build(staging: Path) -> dict[str, Any]:
            previous = None
            if before is not None:
                previous = load_sweep_state(self.evaluate(before, data, compressed, exported).path)
            start = time.perf_counter()  # this stage's own time, without the smaller eps's
            outcome = evaluate(
                exported.value,
                compressed.value.model,
                None if attack_kind(attack) == "none" else attack,
                data.value,
                batch_size=self.suite.evaluation.batch_size,
                seed=self.suite.seed,
                device=self.device,
                lowering=compressed.value.lowering,
                attack_name=cell.attack.name,
                previous=previous,
            )
            torch.save(outcome.pop("per_sample"), staging / "per_sample.pt")
            sweep_state = outcome.pop("sweep_state")
            if sweep_state is not None:
                torch.save(sweep_state, staging / SWEEP_STATE)
            return outcome | {"seconds": time.perf_counter() - start}

        config, inputs = self._evaluate_plan(cell, data, compressed, exported)
        return self._stage("evaluate", config, inputs, build)

    def _evaluate_plan(
        self, cell: Cell, data: StageResult, compressed: StageResult, exported: StageResult
    ) -> tuple[dict[str, Any], list[str]]:
        config = {"attack": cell.attack.record(), "evaluation": to_dict(self.suite.evaluation), "seed": self.suite.seed}
        inputs = [exported.key, compressed.key, data.key]
        before = self.previous_eps(cell)
        if before is not None:
            inputs.append(self.evaluate_key(before, data, compressed, exported))
        return config, inputs

    def evaluate_key(self, cell: Cell, data: StageResult, compressed: StageResult, exported: StageResult) -> str:
        """The key of `cell`'s evaluate stage, without running it (memoised: a sweep's keys chain)."""
        memo = (json.dumps(cell.attack.record(), sort_keys=True, default=str), exported.key, compressed.key, data.key)
        if memo not in self._evaluate_keys:
            config, inputs = self._evaluate_plan(cell, data, compressed, exported)
            self._evaluate_keys[memo] = stage_key("evaluate", config, inputs)
        return self._evaluate_keys[memo]

    def previous_eps(self, cell: Cell) -> Cell | None:
        """In an eps sweep, `cell` with its attack at the next-smaller eps; None when it is not part of one.

        A sweep is the suite's entries of one `gradient` attack whose config is an eps-ball (bench.attacks.LinfConfig,
        any norm) and whose other parameters are all equal (`{name: pgd, eps: [0.05, 0.1]}` expands to two of
        them; separate entries with equal parameters join the same sweep)."""
        family, eps = _sweep_family(cell.attack)
        if family is None:
            return None
        if self._sweeps is None:
            self._sweeps = {}
            for choice in self.suite.choices("attack"):
                fam, e = _sweep_family(choice)
                if fam is not None:
                    self._sweeps.setdefault(fam, []).append((e, choice))
        smaller = [(e, choice) for e, choice in self._sweeps.get(family, []) if e < eps]
        if not smaller:
            return None
        best = max(e for e, _ in smaller)
        choice = next(choice for e, choice in smaller if e == best)
        return dataclasses.replace(cell, attack=choice)


SWEEP_STATE = "sweep_state.pt"  # an evaluate stage's survivors and their adversarial points, for the next eps


def load_sweep_state(path: Path) -> dict[str, Any]:
    """What the next eps of a sweep continues from: the stage's per-sample robust flags and its sweep state."""
    state = torch.load(path / SWEEP_STATE, weights_only=True)
    per_sample = torch.load(path / "per_sample.pt", weights_only=True)
    return state | {"robust_correct": per_sample["robust_correct"]}


def _sweep_family(attack: Choice) -> tuple[str | None, float]:
    """(what identifies the attack's eps sweep, its eps); (None, 0) for an attack that cannot be part of one."""
    from bench.attacks import LinfConfig

    if attack.steps or not isinstance(attack.config, LinfConfig):
        return None, 0.0
    if registry("attack").get(attack.name).capabilities.get("kind") != "gradient":
        return None, 0.0
    record = {k: v for k, v in attack.record().items() if k != "eps"}
    return json.dumps(record, sort_keys=True, default=str), float(attack.config.eps)


BASELINE_COMPRESSION = Choice("compression", "none", "none", NoConfig())
BASELINE_RUNTIME = Choice("runtime", "eager", "eager", NoConfig())


def is_compressed(cell: Cell) -> bool:
    return cell.compression.record() != {"name": "none"}


def is_baseline(cell: Cell) -> bool:
    return not is_compressed(cell) and cell.runtime.record() == {"name": "eager"}


def _load_module(path: Path, meta: dict[str, Any]) -> nn.Module:
    """The whole pickled module a train or compress stage saved (pruned models change shape: no state dict)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.load's TypedStorage notice on pickled modules
        return torch.load(path / "model.pt", map_location="cpu", weights_only=False).eval()


def _copy_module(model: nn.Module) -> nn.Module:
    """A deep copy, so that a compression never alters the cached model other cells share."""
    import copy

    return copy.deepcopy(model)
