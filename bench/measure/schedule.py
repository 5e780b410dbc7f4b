"""Measure a group of artifacts, each in several fresh processes, interleaved: round r runs one process of every
artifact, in an order rotated by r, so that no artifact always runs first (on a cold machine) or last, and drift
over the minutes a group takes is spread over all of them. Each process is bench.measure.worker on its share of
the profile; the parent pools the processes' samples and keeps them apart for the tests of `bench compare`.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure.latency import Profile, summarize
from bench.measure.sessions import pin_threads_env
from bench.userimport import subprocess_env


class MeasurementTimeout(RuntimeError):
    """A measurement process ran past the cell time limit and was stopped."""


@dataclasses.dataclass
class MeasureJob:
    key: str  # the measure stage's cache key
    spec: dict[str, Any]  # the worker spec, with the whole profile (split between the processes here)


def run_worker(spec: dict[str, Any], threads: int, timeout_s: float | None = None) -> dict[str, Any]:
    """Run bench.measure.worker in a fresh process on `spec`; its stderr becomes the error if it fails."""
    with tempfile.TemporaryDirectory(prefix="bench-measure-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "bench.measure.worker", str(spec_path), str(out_path)],
                capture_output=True,
                text=True,
                env=subprocess_env(pin_threads_env(threads)),  # the worker unpickles user models too
                timeout=timeout_s,
                # `-m` puts the working directory first on the worker's path: a temporary one, so that a folder
                # named `bench` (or `models`) where the user stands cannot shadow the harness
                cwd=tmp,
            )
        except subprocess.TimeoutExpired:  # subprocess.run has killed the worker
            raise MeasurementTimeout(f"timeout after {timeout_s:g} s (measurement process stopped)") from None
        if proc.returncode != 0:
            raise RuntimeError(f"measurement worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(out_path.read_text())


def measure_interleaved(
    jobs: list[MeasureJob], threads: int, timeout_s: float | None = None
) -> dict[str, dict[str, Any] | Exception]:
    """Each job's pooled result (or the exception that stopped it), keyed by job key."""
    if not jobs:
        return {}
    profile = Profile(**jobs[0].spec["profile"])
    share = dataclasses.asdict(profile.per_process())
    runs: dict[str, list[dict[str, Any]]] = {job.key: [] for job in jobs}
    failed: dict[str, Exception] = {}
    for rnd in range(max(1, profile.processes)):
        shift = rnd % len(jobs)
        for job in jobs[shift:] + jobs[:shift]:
            if job.key in failed:
                continue
            spec = job.spec | {"profile": share, "memory": job.spec.get("memory", True) and rnd == 0}
            start = time.perf_counter()
            try:
                result = run_worker(spec, threads, timeout_s)
            except Exception as exc:  # this artifact's cells fail; the others are measured on
                failed[job.key] = exc
                continue
            result["seconds"] = time.perf_counter() - start
            runs[job.key].append(result)
    return {key: failed.get(key) or pool(results) for key, results in runs.items()}


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One artifact's processes as one measurement: statistics over all samples, each process's samples kept.

    Memory figures and session details come from the first process (the one that ran the memory pass); load and
    first-call times are the processes' medians.
    """
    first = results[0]
    latency, samples = {}, {}
    for batch, stats in first["latency_ms"].items():
        per_process = [r["samples_ms"][batch] for r in results]
        pooled = summarize([v for p in per_process for v in p])
        pooled.update(warmup_s=stats["warmup_s"], timer=stats["timer"])
        if "wall_p50" in stats:
            pooled["wall_p50"] = statistics.median(r["latency_ms"][batch]["wall_p50"] for r in results)
        latency[batch], samples[batch] = pooled, per_process
    largest = str(first["throughput_batch"])
    p50 = latency[largest]["p50"]
    return first | {
        "latency_ms": latency,
        "samples_ms": samples,  # batch -> one list per process
        "load_s": statistics.median(r["load_s"] for r in results),
        "first_call_ms": statistics.median(r["first_call_ms"] for r in results),
        "throughput_sps": int(largest) / (p50 / 1e3) if p50 > 0 else None,
        "reference_ms": [r["reference_ms"] for r in results],  # one per process, in the order of the samples
        "processes": len(results),
        "seconds": sum(r["seconds"] for r in results),
    }
