"""`bench run --executor ray`: a suite's stages as Ray tasks with their dependencies, on a local instance or a
cluster; this process (the driver) still writes every record, exactly as the local executor does.

How it runs (docs/ray.md):

- The driver keys every stage before anything runs (bench.stage_graph) and submits one task per unique stage
  that its own cache does not hold, with the stages before it as arguments: Ray runs independent stages in
  parallel across nodes, and each unique stage once. The data stage is made by the driver, which loaded the data.
- A task installs the stages it is given into its node's cache (bench.bundles: each file checked against the
  sha256 it was sent with), runs the cell's pipeline up to its stage (the inputs are cache hits), and returns the
  new entry as a Bundle through Ray's object store. Nodes need not share a filesystem; the driver installs every
  bundle into its own cache as it arrives, so `load_run`, `report`, `compare` and `--resume` work as after a
  local run, and a killed driver loses no finished stage.
- A task's resources come from the suite's `resources:` section (default 1 CPU; 1 GPU per task where the device
  is cuda). The artifacts of a group (cells sharing a trained model) are measured together by one task that
  asks for every CPU (and GPU) of the node it is pinned to, so no other task runs beside the timed calls; the
  node is recorded with the measurement (`measurement.node`).
- A stage that fails is returned as a Failure (one line and the traceback) and passed along to the stages that
  depend on it; a worker that dies is retried by Ray (`max_retries`), and its cell is recorded once, by the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import jsonl, userimport
from bench.assemble import (
    CellStages,
    assemble_group,
    error_summary,
    identity_record,
    remote_failed_record,
    skipped_record,
)
from bench.bundles import Bundle, install, pack
from bench.cache import StageCache, stage_key
from bench.errors import BenchInputError
from bench.matrix import Cell
from bench.models import model_files
from bench.parity import check_parity
from bench.pipeline import Pipeline, StageResult
from bench.record import CellRecord
from bench.shards import groups_of
from bench.stage_graph import CHAIN, CellPlan, KeyPlanner, NodeId, StageNode, plan_cells
from bench.suite import RESOURCE_STAGES, Suite
from bench.timelimit import time_limit

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # a task whose worker process or node dies is run again this many times, then its cells fail


def require_ray() -> None:
    """Raise a one-line input error where Ray is not installed (before the run writes anything)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise BenchInputError("the Ray executor needs Ray: pip install -e '.[ray]'", field="--executor") from None


@dataclasses.dataclass
class Failure:
    """A stage that raised, as it travels to the stages after it and to the driver."""

    summary: str
    trace: str


@dataclasses.dataclass
class TaskContext:
    """What every task needs from the driver (pickled with each task; small)."""

    suite: Suite
    device: str
    remeasure: bool
    run_id: str
    timeout: float | None
    driver_node: str  # tasks on the driver's node use the driver's cache: no copy on the same disk
    driver_cache: str
    fingerprints: dict[str, dict[str, str]]  # model label -> the driver's checkpoint / source hashes


# -- the worker side ------------------------------------------------------------------------------------------


def node_cache(ctx: TaskContext) -> StageCache:
    """This node's stage cache: the driver's on the driver's node; elsewhere $BENCH_NODE_CACHE, or a folder per
    node under the temporary directory (so two nodes simulated on one machine keep separate caches)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if node == ctx.driver_node:
        return StageCache(Path(ctx.driver_cache))
    root = os.environ.get("BENCH_NODE_CACHE") or Path(tempfile.gettempdir()) / "bench-node-cache" / node[:16]
    return StageCache(Path(root))


def node_label() -> str:
    import ray

    return f"{platform.node()} (ray node {ray.get_runtime_context().get_node_id()[:12]})"


@contextlib.contextmanager
def task_scope(ctx: TaskContext) -> Iterator[Path]:
    """torch's threads pinned to the task's CPUs, user code found as in the driver, a stages log of its own."""
    import torch

    torch.set_num_threads(task_threads(ctx))
    with (
        tempfile.TemporaryDirectory(prefix="bench-task-") as tmp,
        userimport.search_dir(Path(ctx.suite.file).parent),
        time_limit(ctx.timeout),
    ):
        yield Path(tmp) / "stages.jsonl"


def task_threads(ctx: TaskContext) -> int:
    """torch's threads in a task: the suite's `measurement.threads`, else the CPUs Ray gave the task (every CPU
    of its node for a measurement). With the default requests (bench.ray_executor.RayDriver.resources) that is
    the count a local run uses, hence the same floating-point results; and never more threads than CPUs held."""
    import ray

    given = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    return ctx.suite.measurement.threads or max(1, int(given))


def worker_pipeline(ctx: TaskContext, cache: StageCache, stages_log: Path) -> Pipeline:
    from bench.env import environment

    pipeline = Pipeline(ctx.suite, cache, stages_log, ctx.device, task_threads(ctx), environment(), ctx.remeasure)
    pipeline.run_id = ctx.run_id  # remeasure keys are the driver's run's
    pipeline.fingerprints = ctx.fingerprints  # and the model hashes in the train keys
    pipeline.node = node_label()
    return pipeline


def failure_of(exc: BaseException) -> Failure:
    return Failure(error_summary(exc), "".join(traceback.format_exception(exc)).strip())


def run_stage(ctx: TaskContext, node: StageNode, splits: Any, *inputs: Bundle | Failure) -> Bundle | Failure:
    """Build `node`'s stage on this node from the stages before it (`inputs`, in chain order); a Ray task."""
    for given in inputs:
        if isinstance(given, Failure):
            return given  # the stage it depends on failed: so does this one, with the same cause
    try:
        with task_scope(ctx) as stages_log:
            cache = node_cache(ctx)
            for given in inputs:
                install(cache, given)  # type: ignore[arg-type]
            pipeline = worker_pipeline(ctx, cache, stages_log)
            pipeline.use_datasets({node.cell.dataset.label: splits})
            pipeline.current_cell = node.cell.cell_id
            result = pipeline.chain(node.cell, node.kind)[node.kind]
            if result.key != node.key:
                raise RuntimeError(
                    f"this node keys the {node.kind} stage {result.key}, the driver {node.key}: its harness or "
                    "library versions differ from the driver's (bench.cache.library_versions)"
                )
            bundle = pack(cache, node.kind, node.key)
            lines = [line for line in jsonl.read(stages_log) if (line["kind"], line["key"]) == node.id]
            bundle.log, bundle.node = lines, pipeline.node
            return bundle
    except Exception as exc:  # recorded as the cell's failure by the driver
        return failure_of(exc)


def measure_group(
    ctx: TaskContext, cells: list[Cell], data: Bundle, *exports: Bundle | Failure
) -> tuple[list[Bundle | Failure], str]:
    """Measure the artifacts of a group together on this node (holding all of it); one result per export."""
    results: list[Bundle | Failure] = [e if isinstance(e, Failure) else Failure("", "") for e in exports]
    label = node_label()
    try:
        with task_scope(ctx) as stages_log:
            cache = node_cache(ctx)
            pipeline = worker_pipeline(ctx, cache, stages_log)
            data_result = StageResult("data", data.key, cache.path("data", data.key), data.meta, True)
            items, slots = [], []
            for i, (cell, exported) in enumerate(zip(cells, exports, strict=True)):
                if isinstance(exported, Bundle):
                    path = install(cache, exported)
                    ex = StageResult("export", exported.key, path, cache.meta("export", exported.key), True)
                    items.append((cell, data_result, ex))
                    slots.append(i)
            measured = pipeline.measure_many(items, ctx.timeout)
            log_lines = list(jsonl.read(stages_log))
            for i, result in zip(slots, measured, strict=True):
                if isinstance(result, Exception):
                    results[i] = failure_of(result)
                    continue
                bundle = pack(cache, "measure", result.key)
                bundle.log = [line for line in log_lines if line["key"] == result.key and not line["cache_hit"]]
                bundle.node = label
                results[i] = bundle
    except Exception as exc:
        failure = failure_of(exc)
        results = [r if isinstance(r, Bundle) else failure for r in results]
    return results, label


# -- the driver side ------------------------------------------------------------------------------------------


class RayDriver:
    """Submits a run's stage graph to Ray and turns finished stages into records, group by group."""

    def __init__(self, pipeline: Pipeline, timeout: float | None) -> None:
        import ray

        self.ray = ray
        self.pipeline = pipeline
        self.suite = pipeline.suite
        self.cache = pipeline.cache
        self.ctx = TaskContext(
            suite=pipeline.suite,
            device=pipeline.device,
            remeasure=pipeline.remeasure,
            run_id=pipeline.run_id,
            timeout=timeout,
            driver_node=ray.get_runtime_context().get_node_id(),
            driver_cache=str(self.cache.root),
            fingerprints=model_files(pipeline.suite),
        )
        # a user's model code, imported by the driver from beside its suite, is importable in the workers too (the
        # folders it came from on their PYTHONPATH, through Ray's runtime environment)
        user_path = userimport.subprocess_env({}).get("PYTHONPATH")
        self.runtime_env = {"env_vars": {"PYTHONPATH": user_path}} if user_path else None
        self.stage_task = ray.remote(max_retries=MAX_RETRIES)(run_stage)
        self.measure_task = ray.remote(max_retries=MAX_RETRIES, num_returns=1)(measure_group)
        self.refs: dict[NodeId, Any] = {}  # node -> the ObjectRef of its bundle
        self.pending: dict[Any, Any] = {}  # ObjectRef -> what it is: a NodeId, or ("measure", group index)
        self.results: dict[NodeId, StageResult | Failure] = {}
        self.splits_refs: dict[str, Any] = {}
        self.nodes: dict[NodeId, StageNode] = {}
        self._next_node = 0
        self.most_cpus = largest_node()[0]

    # -- submitting ---------------------------------------------------------------------------------------------

    def resources(self, kind: str) -> dict[str, float]:
        wanted = getattr(self.suite.resources, kind)
        # the threads a local run uses, or all of the largest node where that is fewer
        cpus = wanted.cpus if wanted.cpus is not None else min(self.pipeline.threads, self.most_cpus)
        gpus = wanted.gpus if wanted.gpus is not None else (1.0 if self.pipeline.device == "cuda" else 0.0)
        return {"num_cpus": cpus, "num_gpus": gpus, "runtime_env": self.runtime_env}

    def need(self, node_id: NodeId) -> None:
        """A record needs this stage's result: from the driver's cache where it is there (no transfer), else from
        a task (submitted with the tasks before it)."""
        if node_id in self.results or node_id in self.refs:
            return
        kind, key = node_id
        if kind == "data" and not self.cache.has(kind, key):
            self.pipeline.data(self.nodes[node_id].cell.dataset)  # the driver loaded the data: it makes the stage
        if self.cache.has(kind, key):
            self.results[node_id] = self._cached(kind, key)
        else:
            self.ref_for(node_id)

    def ref_for(self, node_id: NodeId) -> Any:
        """The ObjectRef of a stage's bundle: from the driver's cache where it is there, else from a task."""
        if node_id in self.refs:
            return self.refs[node_id]
        kind, key = node_id
        node = self.nodes[node_id]
        if kind == "data" and not self.cache.has(kind, key):
            self.pipeline.data(node.cell.dataset)  # the driver loaded the data: it makes the data stage
        if self.cache.has(kind, key):
            self.results[node_id] = self._cached(kind, key)
            ref = self.ray.put(pack(self.cache, kind, key))
        else:
            inputs = [self.ref_for(need) for need in node.needs]
            splits = self.splits_ref(node.cell)
            ref = self.stage_task.options(**self.resources(kind)).remote(self.ctx, node, splits, *inputs)
            self.pending[ref] = node_id
        self.refs[node_id] = ref
        return ref

    def splits_ref(self, cell: Cell) -> Any:
        label = cell.dataset.label
        if label not in self.splits_refs:
            self.splits_refs[label] = self.ray.put(self.pipeline._splits[label])
        return self.splits_refs[label]

    def measure_node(self) -> dict[str, Any]:
        """Task options pinning a measurement to the next alive node in turn, holding every CPU and GPU of it."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = sorted(
            (n for n in self.ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0),
            key=lambda n: n["NodeID"],
        )
        node = alive[self._next_node % len(alive)]
        self._next_node += 1
        return {
            "num_cpus": node["Resources"]["CPU"],
            "num_gpus": node["Resources"].get("GPU", 0),
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            "runtime_env": self.runtime_env,
        }

    def _cached(self, kind: str, key: str) -> StageResult:
        return StageResult(kind, key, self.cache.path(kind, key), self.cache.meta(kind, key), cache_hit=True)

    # -- receiving ------------------------------------------------------------------------------------------------

    def receive(self, ref: Any) -> None:
        what = self.pending.pop(ref)
        try:
            value = self.ray.get(ref)
        except Exception as exc:  # Ray's own: a task whose worker died past its retries, a lost node, ...
            value = Failure(f"ray: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}", str(exc))
        if what[0] == "measure":
            results, _node = value if not isinstance(value, Failure) else ([value] * len(what[2]), None)
            for export_key, result in zip(what[2], results, strict=True):
                self.measured[export_key] = self._land(result)
        else:
            self.results[what] = self._land(value)

    def _land(self, value: Bundle | Failure) -> StageResult | Failure:
        """Install a bundle into the driver's cache and log the stage; a Failure as it is."""
        if isinstance(value, Failure):
            return value
        try:
            path = install(self.cache, value)
        except Exception as exc:  # a bundle that does not match its hashes
            return failure_of(exc)
        for line in value.log:
            jsonl.append(self.pipeline.stages_log, line | {"node": value.node})
        return StageResult(value.kind, value.key, path, self.cache.meta(value.kind, value.key), cache_hit=False)

    # -- the run --------------------------------------------------------------------------------------------------

    def records(self, todo: list[Cell], evidence: Any, bar: Any) -> Iterator[list[CellRecord]]:
        runnable = [c for c in todo if not c.skip_reason]
        planner = KeyPlanner(
            self.suite,
            self.cache,
            self.pipeline.stages_log,
            self.pipeline.device,
            self.pipeline.threads,
            self.pipeline.environment,
            self.pipeline.remeasure,
        )
        planner._splits = self.pipeline._splits
        planner.run_id = self.pipeline.run_id
        self.nodes, plans = plan_cells(planner, runnable)
        plan_of = {p.cell.cell_id: p for p in plans}
        groups = groups_of(todo)
        self.measured: dict[str, StageResult | Failure] = {}  # export key -> its measurement
        measure_config = self.pipeline.measure_config()

        for index, group in enumerate(groups):  # submit everything; Ray orders it by the dependencies
            cells, exports = [], []
            for cell in group:
                if cell.skip_reason:
                    continue
                plan = plan_of[cell.cell_id]
                for node_id in (*plan.nodes.values(), plan.baseline):
                    self.need(node_id)
                export_key = plan.nodes["export"][1]
                measure_key = stage_key("measure", measure_config, [export_key])
                if export_key in self.measured or export_key in exports:
                    continue
                if self.cache.has("measure", measure_key):
                    self.measured[export_key] = self._cached("measure", measure_key)
                    continue
                cells.append(cell)
                exports.append(export_key)
            if exports:
                data_ref = self.ref_for(plan_of[cells[0].cell_id].nodes["data"])
                export_refs = [self.ref_for(("export", key)) for key in exports]
                options = self.measure_node()
                ref = self.measure_task.options(**options).remote(self.ctx, cells, data_ref, *export_refs)
                self.pending[ref] = ("measure", index, exports)

        waiting = list(range(len(groups)))
        while waiting:
            for index in [i for i in waiting if self._group_done(groups[i], plan_of)]:
                waiting.remove(index)
                yield self._group_records(groups[index], plan_of, evidence)
            if waiting and self.pending:
                bar.set_postfix_str(f"{len(self.pending)} tasks in flight", refresh=True)
                ready, _ = self.ray.wait(list(self.pending), num_returns=1)
                for ref in ready:
                    self.receive(ref)
            elif waiting:
                raise RuntimeError("a group waits for stages nothing will make (bench.ray_executor)")

    def _group_done(self, group: list[Cell], plan_of: dict[str, CellPlan]) -> bool:
        for cell in group:
            plan = plan_of.get(cell.cell_id)
            if plan is None:
                continue
            if any(n not in self.results for n in (*plan.nodes.values(), plan.baseline)):
                return False
            if plan.nodes["export"][1] not in self.measured and not self._failed(plan):
                return False
        return True

    def _failed(self, plan: CellPlan) -> Failure | None:
        for node_id in (*(plan.nodes[k] for k in CHAIN), plan.baseline):
            result = self.results.get(node_id)
            if isinstance(result, Failure):
                return result
        return None

    def _group_records(self, group: list[Cell], plan_of: dict[str, CellPlan], evidence: Any) -> list[CellRecord]:
        records: dict[str, CellRecord] = {}
        done: list[tuple[Cell, CellRecord, CellStages, StageResult | Exception]] = []
        seconds: dict[str, float] = {}
        for cell in group:
            identity = identity_record(cell, self.suite.seed, self.pipeline.device)
            if cell.skip_reason:
                records[cell.cell_id] = skipped_record(identity, cell.skip_reason)
                continue
            plan = plan_of[cell.cell_id]
            failure = self._failed(plan)
            if failure is None:
                measured = self.measured.get(plan.nodes["export"][1])
                failure = measured if isinstance(measured, Failure) else None
            if failure is not None:
                records[cell.cell_id] = remote_failed_record(identity, failure.summary, failure.trace)
                continue
            chain = [self.results[plan.nodes[k]] for k in CHAIN]
            data, trained, compressed, exported, evaluated = chain  # type: ignore[misc]
            own = [r for r, k in zip(chain, CHAIN, strict=True) if self.nodes[plan.nodes[k]].cell is cell]
            seconds[cell.cell_id] = sum(r.meta.get("seconds", 0.0) for r in own if not r.cache_hit)  # type: ignore[union-attr]
            try:
                if not compressed.meta.get("lowering"):  # type: ignore[union-attr]
                    check_parity(cell, evaluated.meta["agreement"])  # type: ignore[union-attr]
            except Exception as exc:
                records[cell.cell_id] = remote_failed_record(identity, *dataclasses.astuple(failure_of(exc)))
                continue
            stages = CellStages(data, trained, compressed, exported, None, evaluated, self.results[plan.baseline])  # type: ignore[arg-type]
            done.append((cell, identity, stages, self.measured[plan.nodes["export"][1]]))  # type: ignore[arg-type]
        records.update(assemble_group(done, self.suite, evidence, seconds))
        out = []
        for cell in group:
            record = records[cell.cell_id]
            record.wall_s = seconds.get(cell.cell_id, 0.0)
            out.append(record)
        return out


_started_here = False  # whether this process started (or joined) Ray in `connect`, and so shuts it down after


def largest_node() -> tuple[float, float]:
    """The most CPUs and GPUs one alive node of the cluster has."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return max((n.get("CPU", 0) for n in nodes), default=0), max((n.get("GPU", 0) for n in nodes), default=0)


def connect(address: str | None, suite: Suite, threads: int) -> None:
    """Start or join Ray (`address` None: a local instance, unless RAY_ADDRESS names a cluster) and check that
    every task the suite asks for fits on some node: a request no node can meet would wait forever. Called before
    the run writes anything, so a mistake is an input error with nothing written."""
    import ray

    global _started_here
    if not ray.is_initialized():
        _started_here = True
        start = time.perf_counter()
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BenchInputError(f"cannot join Ray at {address}: {exc}", field="--ray-address") from None
        log.info("Ray ready after %.1f s", time.perf_counter() - start)
    most_cpus, most_gpus = largest_node()
    if most_cpus <= 0:
        raise BenchInputError("the Ray cluster has no node with a CPU for the stages", field="--ray-address")
    for kind in RESOURCE_STAGES:
        wanted = getattr(suite.resources, kind)
        cpus = wanted.cpus if wanted.cpus is not None else min(threads, most_cpus)
        for name, asked, most in (("cpus", cpus, most_cpus), ("gpus", wanted.gpus or 0, most_gpus)):
            if asked > most:
                field = f"resources.{kind}.{name}"
                raise BenchInputError(f"{asked:g} {name} asked, the largest Ray node has {most:g}", field=field)


def ray_records(
    todo: list[Cell], pipeline: Pipeline, evidence: Any, timeout: float | None, bar: Any, address: str | None
) -> Iterator[list[CellRecord]]:
    """The records of `todo`, run as Ray tasks, group by group as their stages finish (bench.runner writes them);
    Ray is shut down after, unless this process had joined it before `connect`."""
    import ray

    connect(address, pipeline.suite, pipeline.threads)  # a no-op where the runner connected already
    try:
        yield from RayDriver(pipeline, timeout).records(todo, evidence, bar)
    finally:
        if _started_here:
            ray.shutdown()
