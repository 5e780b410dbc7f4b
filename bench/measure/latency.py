"""Latency: warm up, then time calls until the profile's stop rule says the p50 is known.

Two stop rules. `smoke` (CI) and `dev` (laptops, pytest) stop once the p50's 95% confidence interval (the
distribution-free one between two order statistics) lies within `precision` (2%) of the p50, after
`min_iterations` calls; `nightly` (a valid p90) and `publish` (a valid p99) keep MLPerf LoadGen's and
optimum-benchmark's fixed rule (min queries AND min duration). Both stop at `max_duration_s` whatever the samples say.
A percentile from fewer samples than LoadGen's early-stopping bound (p90: 64, p95: 130, p99: 662) is marked
`insufficient` and must not be gated on.

Each artifact is timed in `processes` fresh processes, interleaved with the other artifacts of its group (asv and
pyperf do the same): one process's state (allocator, page cache, what else ran on the machine then) is one sample
of the noise, and the variation between processes is what a comparison between runs must beat. The profile's
iterations and durations are split between the processes; each process warms up in full, and applies the precision
rule to its own samples (its median is what `bench compare` tests).
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
    # stop once the p50's 95% confidence interval is within this fraction of the p50 (None: the fixed rule)
    precision: float | None = None

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
    # smoke and dev: a floor of 0.1 s of timed calls per process before the precision rule may stop them (calls
    # stopped a few ms after the warm-up read a p50 ~10% above a bare loop's on a 60 us call: docs/measurement.md)
    "smoke": Profile(2, 0.02, min_iterations=5, min_duration_s=0.1, max_duration_s=5, processes=1, precision=0.02),
    "dev": Profile(10, 0.1, min_iterations=30, min_duration_s=0.3, max_duration_s=30, processes=3, precision=0.02),
    "nightly": Profile(10, 1.0, min_iterations=130, min_duration_s=10, max_duration_s=120, processes=5),
    "publish": Profile(10, 2.0, min_iterations=662, min_duration_s=60, max_duration_s=600, processes=10),
}


def resolve_profile(measurement: Any) -> Profile:
    """The suite's profile with its explicit overrides (min_iterations, min/max_duration_s, processes, precision)."""
    base = PROFILES[measurement.profile]
    overrides = {
        k: getattr(measurement, k)
        for k in ("min_iterations", "min_duration_s", "max_duration_s", "processes", "precision")
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


CONFIDENCE = 0.95
EXACT_UP_TO = 1000  # the binomial sums are exact up to this many samples, the normal approximation beyond


@functools.lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks (l, n + 1 - l) of the order statistics that bound the median with at least `confidence`, the
    distribution-free interval: the number of samples below the true median is Binomial(n, 1/2), so
    P(x_(l) <= median <= x_(n+1-l)) = 1 - 2 P(B <= l - 1). The largest such l; None when even [min, max] covers
    less (n < 6 at 95%)."""
    tail = (1 - confidence) / 2
    if n > EXACT_UP_TO:
        z = statistics.NormalDist().inv_cdf(1 - tail)
        lower = math.floor(n / 2 - z * math.sqrt(n) / 2)  # the normal approximation of the binomial ranks
        return (lower, n + 1 - lower) if lower >= 1 else None
    pmf = 0.5**n  # P(B = 0); no underflow up to EXACT_UP_TO
    cumulative, lower = 0.0, 0
    while lower < n:  # include the rank lower + 1 while P(B <= lower) stays within the tail
        cumulative += pmf
        if cumulative > tail:
            break
        pmf *= (n - lower) / (lower + 1)  # P(B = lower + 1)
        lower += 1
    return (lower, n + 1 - lower) if lower >= 1 else None


def median_ci(sorted_values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The p50's confidence interval (order statistics, distribution-free) of already sorted values, or None."""
    ranks = median_ci_ranks(len(sorted_values), confidence)
    if ranks is None:
        return None
    return sorted_values[ranks[0] - 1], sorted_values[ranks[1] - 1]


def within_precision(sorted_values: list[float], precision: float) -> bool:
    """True when the p50's 95% confidence interval lies within `precision` (a fraction) of the p50 on both sides."""
    ci = median_ci(sorted_values)
    if ci is None:
        return False
    p50 = percentile(sorted_values, 50)
    return ci[0] >= p50 * (1 - precision) and ci[1] <= p50 * (1 + precision)


def summarize(samples_ms: list[float]) -> dict[str, Any]:
    """p50 (the primary statistic) with its 95% confidence interval `p50_ci` ([lo, hi], None under 6 samples), p90,
    p95, p99, mean, std, min, max, n; raw samples kept alongside."""
    ordered = sorted(samples_ms)
    n = len(ordered)
    stats: dict[str, Any] = {f"p{q}": percentile(ordered, q) for q in (50, 90, 95, 99)}
    ci = median_ci(ordered)
    stats["p50_ci"] = list(ci) if ci is not None else None
    stats.update(
        mean=statistics.fmean(ordered) if n else float("nan"),
        std=statistics.stdev(ordered) if n > 1 else 0.0,
        min=ordered[0] if n else float("nan"),
        max=ordered[-1] if n else float("nan"),
        n=n,
        insufficient=[name for name, need in PERCENTILE_MIN_SAMPLES.items() if n < need],
    )
    return stats


class StopRule:
    """When a process's timed calls stop (`reason` says which rule stopped them):

    - `precision`: the profile has a precision, at least `min_iterations` calls and `min_duration_s` are done, and the
      p50's 95% confidence interval is within `precision` of the p50 (checked after every 5% more samples);
    - `min_reached`: the profile has none, and both `min_iterations` calls and `min_duration_s` are done (MLPerf);
    - `max_duration`: `max_duration_s` has passed, whatever else (a slow artifact may stop under `min_iterations`).
    """

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.reason: str | None = None
        self._next_check = max(1, profile.min_iterations)

    def done(self, samples: list[float], elapsed_s: float) -> bool:
        p, n = self.profile, len(samples)
        if elapsed_s >= p.max_duration_s:
            self.reason = "max_duration"
        elif n >= p.min_iterations and elapsed_s >= p.min_duration_s:
            if p.precision is None:
                self.reason = "min_reached"
            elif n >= self._next_check:
                self._next_check = n + max(1, n // 20)  # sorting every call would cost O(n^2 log n)
                if within_precision(sorted(samples), p.precision):
                    self.reason = "precision"
        return self.reason is not None


def time_calls(call: Callable[[], Any], sync: Callable[[], None], profile: Profile) -> tuple[list[float], float, str]:
    """Warm up, then time `call` (synchronised by `sync`) until the profile's stop rule;
    (samples in ms, warmup s, the rule that stopped it: see StopRule)."""
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
    rule = StopRule(profile)
    begin = time.perf_counter()
    while True:
        t0 = time.perf_counter_ns()
        call()
        sync()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if rule.done(samples, time.perf_counter() - begin):
            return samples, warmup_s, str(rule.reason)


def time_calls_cuda(call: Callable[[], Any], profile: Profile) -> tuple[list[float], list[float], float, str]:
    """Like `time_calls` on a CUDA device: per call, CUDA events around it (device time, which the stop rule reads)
    and the host wall time with a synchronisation before and after; (device samples ms, wall samples ms, warmup s,
    stop rule)."""
    import torch

    def sync() -> None:
        torch.cuda.synchronize()

    warmup = dataclasses.replace(profile, min_iterations=1, min_duration_s=0, precision=None)
    _, warmup_s, _ = time_calls(call, sync, warmup)
    device_ms: list[float] = []
    wall_ms: list[float] = []
    rule = StopRule(profile)
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
        if rule.done(device_ms, time.perf_counter() - begin):
            return device_ms, wall_ms, warmup_s, str(rule.reason)
