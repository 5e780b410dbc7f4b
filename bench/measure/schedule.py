"""Measure a group of artifacts, each in several fresh processes, interleaved: round r runs one process of every
artifact, in an order rotated by r, so that no artifact always runs first (on a cold machine) or last, and drift
over the minutes a group takes is spread over all of them. Each process is bench.measure.worker on its share of
the profile; the parent pools the processes' samples and keeps them apart for the tests of `bench compare`.

Each process is forked from a zygote that has the artifact's runtime imported already (bench.measure.zygote), one
zygote per runtime and environment, kept for the life of this process; `BENCH_MEASURE_LAUNCHER=subprocess` (or a
platform without fork) starts a new interpreter per process instead.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.measure.latency import Profile, summarize
from bench.measure.sessions import pin_threads_env
from bench.measure.zygote import preload_for
from bench.userimport import subprocess_env

LAUNCHERS = ("zygote", "subprocess")


class MeasurementTimeout(RuntimeError):
    """A measurement process ran past the cell time limit and was stopped."""


@dataclasses.dataclass
class MeasureJob:
    key: str  # the measure stage's cache key
    spec: dict[str, Any]  # the worker spec, with the whole profile (split between the processes here)


def launcher() -> str:
    """How measurement processes start: `zygote` (forked warm, the default where fork exists) or `subprocess` (a new
    interpreter each), from BENCH_MEASURE_LAUNCHER."""
    chosen = os.environ.get("BENCH_MEASURE_LAUNCHER") or ("zygote" if hasattr(os, "fork") else "subprocess")
    if chosen not in LAUNCHERS:
        raise ValueError(f"BENCH_MEASURE_LAUNCHER={chosen!r}: expected one of {', '.join(LAUNCHERS)}")
    return chosen


def run_worker(
    spec: dict[str, Any], threads: int, timeout_s: float | None = None, how: str | None = None
) -> dict[str, Any]:
    """Run bench.measure.worker in a fresh process on `spec` (forked from a zygote or a new interpreter, as `how` or
    `launcher()` says); its stderr becomes the error if it fails."""
    how = how or launcher()
    env = subprocess_env(pin_threads_env(threads))  # the worker unpickles user models too
    with tempfile.TemporaryDirectory(prefix="bench-measure-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        if how == "zygote":
            code, stderr = zygote_for(preload_for(spec["session"]), env).run(
                spec_path, out_path, Path(tmp) / "worker.log", Path(tmp), timeout_s
            )
        else:
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "bench.measure.worker", str(spec_path), str(out_path)],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=timeout_s,
                    # `-m` puts the working directory first on the worker's path: a temporary one, so that a folder
                    # named `bench` (or `models`) where the user stands cannot shadow the harness
                    cwd=tmp,
                )
            except subprocess.TimeoutExpired:  # subprocess.run has killed the worker
                raise MeasurementTimeout(f"timeout after {timeout_s:g} s (measurement process stopped)") from None
            code, stderr = proc.returncode, proc.stderr
        if code != 0:
            raise RuntimeError(f"measurement worker failed (exit {code}):\n{stderr[-4000:]}")
        return json.loads(out_path.read_text())


class ZygoteError(RuntimeError):
    """The zygote itself failed (it could not import its runtime, or it died)."""


class Zygote:
    """A running bench.measure.zygote: `run` forks one measurement process from it and waits for it."""

    START_TIMEOUT_S = 300.0  # importing a runtime on a loaded machine

    def __init__(self, modules: tuple[str, ...], env: dict[str, str]) -> None:
        self.modules = modules
        self._home = tempfile.TemporaryDirectory(prefix="bench-zygote-")  # its cwd: nothing there to shadow bench
        self._stderr = open(Path(self._home.name) / "zygote.log", "w+b")  # noqa: SIM115 (lives as long as the zygote)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.measure.zygote", *modules],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=self._home.name,
        )
        self._buffer = b""
        self._lock = threading.Lock()
        self._ready = False

    def wait_ready(self) -> None:
        if not self._ready:
            if self._message(self.START_TIMEOUT_S) is None:
                self.proc.kill()
                modules = ", ".join(self.modules)
                raise ZygoteError(f"measurement zygote ({modules}) not ready after {self.START_TIMEOUT_S:g} s")
            self._ready = True

    def _message(self, timeout_s: float | None) -> dict[str, Any] | None:
        """The zygote's next line as JSON, or None when `timeout_s` passed first; ZygoteError when it has exited."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self.proc.wait()
                self._stderr.seek(0)
                log = self._stderr.read().decode(errors="replace")
                raise ZygoteError(f"measurement zygote exited ({self.proc.returncode}):\n{log[-4000:]}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, spec: Path, out: Path, log: Path, cwd: Path, timeout_s: float | None) -> tuple[int, str]:
        """Fork a worker on `spec` (writing `out`); (its exit code, its stdout and stderr). MeasurementTimeout after
        `timeout_s`, the worker killed."""
        with self._lock:
            self.wait_ready()
            assert self.proc.stdin is not None
            request = {"spec": str(spec), "out": str(out), "log": str(log), "cwd": str(cwd)}
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            started = self._message(60.0)
            if started is None:
                raise ZygoteError("measurement zygote did not start a worker within 60 s")
            ended = self._message(timeout_s)
            if ended is None:
                with contextlib.suppress(ProcessLookupError):  # it may have ended just now
                    os.kill(started["pid"], signal.SIGKILL)
                self._message(60.0)  # the zygote reaps it and says so
                raise MeasurementTimeout(f"timeout after {timeout_s:g} s (measurement process stopped)")
            return int(ended["exit"]), log.read_text(errors="replace") if log.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the zygote exits at the end of its input
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        self._home.cleanup()


_ZYGOTES: dict[tuple[Any, ...], Zygote] = {}  # in order of last use
_ZYGOTES_LOCK = threading.Lock()
MAX_ZYGOTES = 4  # a new environment (e.g. another suite's user modules on PYTHONPATH) stops the least recently used


def zygote_for(modules: tuple[str, ...], env: dict[str, str]) -> Zygote:
    """The running zygote with `modules` imported in `env`, started now if there is none (or it has died)."""
    key = (modules, tuple(sorted(env.items())), os.getpid())
    with _ZYGOTES_LOCK:
        for other in [k for k in _ZYGOTES if k[-1] != key[-1]]:  # a parent's, inherited by fork: not ours to stop
            del _ZYGOTES[other]
        zygote = _ZYGOTES.get(key)
        if zygote is not None and zygote.proc.poll() is not None:
            _ZYGOTES.pop(key).close()
            zygote = None
        if zygote is None:
            while len(_ZYGOTES) >= MAX_ZYGOTES:
                _ZYGOTES.pop(next(iter(_ZYGOTES))).close()
            zygote = Zygote(modules, env)
        _ZYGOTES.pop(key, None)
        _ZYGOTES[key] = zygote  # the most recently used last
        return zygote


def start_zygotes(specs: list[dict[str, Any]], threads: int) -> None:
    """Start the zygotes these specs need, all at once, and wait until they are ready: their imports run side by side
    and before any timing (an import while another artifact is timed would be noise in its samples)."""
    if launcher() != "zygote":
        return
    env = subprocess_env(pin_threads_env(threads))
    zygotes = {preload_for(spec["session"]) for spec in specs}
    started = [zygote_for(modules, env) for modules in sorted(zygotes)]
    for zygote in started:
        zygote.wait_ready()


@atexit.register
def close_zygotes() -> None:
    """Stop every zygote this process started."""
    with _ZYGOTES_LOCK:
        for key, zygote in list(_ZYGOTES.items()):
            if key[-1] == os.getpid():
                zygote.close()
            del _ZYGOTES[key]


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
    with contextlib.suppress(ZygoteError):  # tried again for each artifact that needs it, which then fails with it
        start_zygotes([job.spec for job in jobs], threads)
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
        pooled["stop"] = [r["latency_ms"][batch].get("stop") for r in results]  # per process, the rule that stopped it
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
        "phases_s": [r.get("phases_s") for r in results],  # per process, where its time went (worker.measure)
        "seconds": sum(r["seconds"] for r in results),
    }
