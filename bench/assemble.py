"""A cell's record, assembled from the results of its stages: where each number of a record comes from.

The runner runs the stages (bench.pipeline) and hands their `StageResult`s here; nothing here runs a stage, so
the order of the stages, which decides what is cached and logged when, stays the runner's business.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import traceback
from typing import TYPE_CHECKING, Any

from bench.checks import budget_verdict, compression_checks
from bench.errors import STAGE_NOTE
from bench.gates import Limit, evaluate_gates
from bench.record import (
    ArtifactInfo,
    BaselineRef,
    BudgetVerdict,
    CellRecord,
    Costs,
    LatencyStats,
    MeasurementInfo,
    Payoff,
    TrainingInfo,
)
from bench.suite import AXES

if TYPE_CHECKING:
    from bench.matrix import Cell
    from bench.pipeline import StageResult

BASELINE_CELL = "compression none, runtime eager"
WORKER_ONLY_LATENCY_KEYS = ("warmup_s", "timer", "stop")  # how the worker timed, not what it measured


@dataclasses.dataclass
class CellStages:
    """The stage results of one ok cell; `baseline` is the uncompressed eager model's evaluation (or `evaluated`
    itself for the baseline cell)."""

    data: StageResult
    trained: StageResult
    compressed: StageResult
    exported: StageResult
    measured: StageResult
    evaluated: StageResult
    baseline: StageResult
    # the uncompressed model's measurement on the same runtime, with its cell id (None for uncompressed cells and
    # where the suite has no uncompressed cell on that runtime)
    uncompressed: tuple[str, StageResult] | None = None


def identity_record(cell: Cell, seed: int, device: str) -> CellRecord:
    """What every record carries, whatever its status: the cell's axis entries, labels, dataset, seed, device."""
    axes = {axis: cell.choice(axis).record() for axis in AXES}
    from bench.models import model_fingerprint  # torch: only where a cell is run

    axes["model"].update(model_fingerprint(cell.model.name, cell.model.config))  # the checkpoint's sha256, ...
    labels = {axis: cell.choice(axis).label for axis in ("dataset", *AXES)}
    # an axis CellRecord has no field for yet is still recorded (in `extra`, written after the known keys)
    fields = {f.name for f in dataclasses.fields(CellRecord)}
    known = {axis: entry for axis, entry in axes.items() if axis in fields}
    extra = {axis: entry for axis, entry in axes.items() if axis not in fields}
    return CellRecord(
        cell_id=cell.cell_id,
        **known,
        labels=labels,
        dataset=cell.dataset.record(),
        seed=seed,
        device=device,
        settings_hash={axis: settings_hash(axes.get(axis) or cell.dataset.record()) for axis in ("dataset", *AXES)},
        extra=extra,
    )


def settings_hash(resolved: dict[str, Any]) -> str:
    """A short, stable hash of an axis entry's resolved parameters."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:12]


def skipped_record(identity: CellRecord, reason: str) -> CellRecord:
    return dataclasses.replace(identity, status="skipped", reason=reason)


def failed_record(identity: CellRecord, exc: BaseException) -> CellRecord:
    """The record of a failed cell: the full traceback, and one line a user can act on."""
    trace = "".join(traceback.format_exception(exc)).strip()
    return dataclasses.replace(identity, status="failed", error=trace, error_summary=error_summary(exc))


def remote_failed_record(identity: CellRecord, summary: str, trace: str) -> CellRecord:
    """The record of a cell whose stage failed in another process (a Ray task): its one line and traceback as sent."""
    return dataclasses.replace(identity, status="failed", error=trace, error_summary=summary)


SUMMARY_CHARS = 300


def error_summary(exc: BaseException) -> str:
    """`stage (plugin): Type: first line of the message`: the stage comes from the note the pipeline adds to an
    exception raised inside a stage; a library's bare exception (ZeroDivisionError) still names where it came from."""
    stage = next((n.removeprefix(STAGE_NOTE) for n in getattr(exc, "__notes__", []) if n.startswith(STAGE_NOTE)), "")
    message = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if stage:
        text = f"{stage}: {text}"
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 3] + "..."


def ok_record(
    identity: CellRecord, stages: CellStages, budget_ratio: float, limits: dict[str, Limit] | None = None
) -> CellRecord:
    """The full record of a cell whose stages all ran; `budget_ratio` is the suite's accuracy budget
    (evaluation.budget), `limits` the suite gates that apply to the cell (GateConfig.for_cell; a `budget` limit
    there overrides `budget_ratio`)."""
    limits = limits or {}
    trained, compressed, exported, measured = stages.trained, stages.compressed, stages.exported, stages.measured
    m = measured.meta["result"]
    ev = stages.evaluated.meta
    export_meta = exported.meta["exported"]["meta"]
    lowered = bool(compressed.meta.get("lowering"))
    quantize_s = export_meta.get("quantize_s", 0.0)
    baseline = BaselineRef(
        cell=BASELINE_CELL,
        clean_accuracy=stages.baseline.meta["clean_accuracy"],
        robust_accuracy=stages.baseline.meta["robust_accuracy"],
    )
    record = dataclasses.replace(
        identity,
        status="ok",
        clean_accuracy=ev["clean_accuracy"],
        robust_accuracy=ev["robust_accuracy"],
        threat_model=ev["threat_model"],
        surrogate=ev["surrogate"],
        n_eval=ev["n_eval"],
        latency_ms=_latency(m["latency_ms"]),
        throughput_sps=m["throughput_sps"],
        peak_memory_mb=m["peak_rss_mb"],
        model_memory_mb=m.get("model_memory_mb"),  # absent from measurements cached before it
        model_size_bytes=exported.meta["size_bytes"],
        params=compressed.meta["params"],
        macs=compressed.meta["macs"],
        costs=Costs(
            train_s=trained.meta["cost"]["seconds"],
            # quantization (calibration + conversion) happens at export but is the compression's cost
            compress_s=compressed.meta["compress_s"] + quantize_s,
            export_s=exported.meta["seconds"] - quantize_s,
            measure_s=measured.meta["seconds"],
            attack_s=ev["attack_s"],
            eval_s=ev["eval_s"],
        ),
        attack_success_rate=ev.get("attack_success_rate"),
        eps=ev.get("eps"),
        norm=ev.get("norm"),
        components=ev.get("components"),
        queries=ev.get("queries"),
        agreement=ev["agreement"],
        checks=ev["checks"]
        | compression_checks(compressed.meta["steps"], compressed.meta.get("lowering"), export_meta),
        baseline=baseline,
        measurement=MeasurementInfo(
            profile=measured.meta["profile"],
            threads=measured.meta["threads"],
            load_s=m["load_s"],
            first_call_ms=m["first_call_ms"],
            baseline_rss_mb=m["baseline_rss_mb"],
            inference_rss_delta_mb=m["inference_rss_delta_mb"],
            peak_gpu_mb=m.get("peak_gpu_mb"),
            model_gpu_mb=m.get("model_gpu_mb"),
            node=measured.meta.get("node"),
        ),
        # the recipe's TrainCost as it is, so that a key a recipe adds is kept rather than dropped
        training=TrainingInfo.from_json(trained.meta["cost"] | {"peak_memory_mb": trained.meta["peak_memory_mb"]}),
        compression_steps=compressed.meta["steps"],
        lowering=export_meta if lowered else None,
        artifact=ArtifactInfo(
            format=exported.meta["exported"]["format"],
            files=exported.meta["files"],
            sha256=exported.meta["sha256"],
            path=str(exported.path / exported.meta["exported"]["main_file"]),
        ),
        stages={s.kind: s.key for s in (stages.data, trained, compressed, exported, measured, stages.evaluated)},
        payoff=_payoff(stages),
    )
    ratio = limits["budget"].value if "budget" in limits else budget_ratio
    samples = _per_sample(stages.evaluated), _per_sample(stages.baseline)
    verdict = budget_verdict(record.to_json(), baseline.to_json(), ratio, *samples)
    record = dataclasses.replace(record, budget=BudgetVerdict.from_json(verdict))
    return dataclasses.replace(record, gates=evaluate_gates(record, limits))


def _per_sample(evaluated: StageResult) -> dict[str, Any] | None:
    """An evaluate stage's per-sample correctness as bool arrays (None when the stage kept none)."""
    path = evaluated.path / "per_sample.pt"
    if not path.is_file():
        return None
    import torch

    flags = torch.load(path, weights_only=True)
    return {k: None if v is None else v.numpy().astype(bool) for k, v in flags.items()}


def _latency(worker_latency: dict[str, dict[str, Any]]) -> dict[str, LatencyStats]:
    return {
        batch: LatencyStats.from_json({k: v for k, v in stats.items() if k not in WORKER_ONLY_LATENCY_KEYS})
        for batch, stats in worker_latency.items()
    }


def _payoff(stages: CellStages) -> Payoff | None:
    if stages.uncompressed is None:
        return None
    from bench.payoff import artifact_payoff

    cell_id, measured = stages.uncompressed
    return artifact_payoff(stages.measured.path, measured.path, cell_id)


def assemble_group(
    done: list[tuple[Cell, CellRecord, CellStages, StageResult | Exception]],
    suite: Any,  # bench.suite.Suite
    evidence: Any,  # bench.runner.EvidenceWriter
    seconds: dict[str, float],
) -> dict[str, CellRecord]:
    """The records of a group's cells whose stages but measurement ran, given each artifact's measurement (or the
    exception that stopped it), by cell id; each compressed cell is compared with the uncompressed model on its
    runtime. Adds the measurement's seconds to the first cell of each artifact in `seconds`. Both executors use it."""
    from bench.pipeline import is_compressed

    uncompressed: dict[str, tuple[str, StageResult]] = {}  # runtime label -> the uncompressed model's measurement
    for cell, _, _, result in done:
        if not isinstance(result, Exception) and not is_compressed(cell):
            uncompressed.setdefault(cell.runtime.label, (str(cell.cell_id), result))
    records: dict[str, CellRecord] = {}
    for cell, identity, stages, result in done:
        try:
            if isinstance(result, Exception):
                raise result
            twin = uncompressed.get(cell.runtime.label) if is_compressed(cell) else None
            stages = dataclasses.replace(stages, measured=result, uncompressed=twin)
            record = ok_record(identity, stages, suite.evaluation.budget, suite.gate.for_cell(cell))
            evidence.write(record, stages)
            if not result.cache_hit and result.key not in evidence.measured_seconds_counted:
                seconds[cell.cell_id] = seconds.get(cell.cell_id, 0.0) + result.meta["seconds"]  # first cell only
                evidence.measured_seconds_counted.add(result.key)
        except Exception as exc:
            record = failed_record(identity, exc)
        records[cell.cell_id] = record
    return records
