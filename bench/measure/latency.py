"""Latency: warm up, then time calls until both a minimum count and a minimum duration are reached.

Profiles follow MLPerf LoadGen's and optimum-benchmark's stop rules (min queries AND min duration): `smoke` for
CI, `dev` for laptops and pytest, `nightly` enough samples for a valid p90, `publish` for a valid p99.
A percentile from fewer samples than LoadGen's early-stopping bound (p90: 64, p95: 130, p99: 662) is marked
`insufficient` and must not be gated on.

Each artifact is timed in `processes` fresh processes, interleaved with the other artifacts of its group (asv and
pyperf do the same): one process's state (allocator, page cache, what else ran on the machine then) is one sample
of the noise, and the variation between processes is what a comparison between runs must beat. The profile's
iterations and durations are split between the processes; each process warms up in full.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

PERCENTILE_MIN_SAMPLES = {"p90": 64, "p95": 130, "p99": 662}


@dataclasses.dataclass(frozen=True)
class Profile:
    warmup_iterations: int
    warmup_s: float
    min_iterations: int
    min_duration_s: float
    max_duration_s: float
    processes: int = 1

    def per_process(self) -> Profile:
        """One process's share: the iterations and durations split between the processes, the warm-up in full."""
        n = max(1, self.processes)
        return dataclasses.replace(
            self,
            min_iterations=max(1, -(-self.min_iterations // n)),
            min_duration_s=self.min_duration_s / n,
            max_duration_s=self.max_duration_s / n,
            processes=1,
        )


PROFILES = {
    "smoke": Profile(2, 0.02, min_iterations=5, min_duration_s=0.1, max_duration_s=5, processes=1),
    "dev": Profile(10, 0.1, min_iterations=30, min_duration_s=1.5, max_duration_s=30, processes=3),
    "nightly": Profile(10, 1.0, min_iterations=130, min_duration_s=10, max_duration_s=120, processes=5),
    "publish": Profile(10, 2.0, min_iterations=662, min_duration_s=60, max_duration_s=600, processes=10),
}


def resolve_profile(measurement: Any) -> Profile:
    """The suite's profile with its explicit overrides (min_iterations, min/max_duration_s, processes)."""
    base = PROFILES[measurement.profile]
    overrides = {
        k: getattr(measurement, k)
        for k in ("min_iterations", "min_duration_s", "max_duration_s", "processes")
        if getattr(measurement, k, None) is not None
    }
    return dataclasses.replace(base, **overrides)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of already sorted values."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> dict[str, Any]:
    """p50 (the primary statistic), p90, p95, p99, mean, std, min, max, n; raw samples kept alongside."""
    ordered = sorted(samples_ms)
    n = len(ordered)
    stats: dict[str, Any] = {f"p{q}": percentile(ordered, q) for q in (50, 90, 95, 99)}
    stats.update(
        mean=statistics.fmean(ordered) if n else float("nan"),
        std=statistics.stdev(ordered) if n > 1 else 0.0,
        min=ordered[0] if n else float("nan"),
        max=ordered[-1] if n else float("nan"),
        n=n,
        insufficient=[name for name, need in PERCENTILE_MIN_SAMPLES.items() if n < need],
    )
    return stats


def time_calls(call: Callable[[], Any], sync: Callable[[], None], profile: Profile) -> tuple[list[float], float]:
    """Warm up, then time `call` (synchronised by `sync`) until the profile's stop rule; (samples in ms, warmup s)."""
    start = time.perf_counter()
    done = 0
    while done < profile.warmup_iterations or time.perf_counter() - start < profile.warmup_s:
        call()
        sync()
        done += 1
        if time.perf_counter() - start > profile.max_duration_s:
            break
    warmup_s = time.perf_counter() - start
    samples: list[float] = []
    begin = time.perf_counter()
    while True:
        t0 = time.perf_counter_ns()
        call()
        sync()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        elapsed = time.perf_counter() - begin
        enough = len(samples) >= profile.min_iterations and elapsed >= profile.min_duration_s
        if enough or elapsed >= profile.max_duration_s:
            break
    return samples, warmup_s


def time_calls_cuda(call: Callable[[], Any], profile: Profile) -> tuple[list[float], list[float], float]:
    """Like `time_calls` on a CUDA device: per call, CUDA events around it (device time) and the host wall time
    with a synchronisation before and after; (device samples ms, wall samples ms, warmup s)."""
    import torch

    def sync() -> None:
        torch.cuda.synchronize()

    _, warmup_s = time_calls(call, sync, dataclasses.replace(profile, min_iterations=1, min_duration_s=0))
    device_ms: list[float] = []
    wall_ms: list[float] = []
    begin = time.perf_counter()
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync()
        t0 = time.perf_counter_ns()
        start.record()
        call()
        end.record()
        sync()
        wall_ms.append((time.perf_counter_ns() - t0) / 1e6)
        device_ms.append(start.elapsed_time(end))
        elapsed = time.perf_counter() - begin
        if (len(device_ms) >= profile.min_iterations and elapsed >= profile.min_duration_s) or (
            elapsed >= profile.max_duration_s
        ):
            return device_ms, wall_ms, warmup_s
