"""Measurement that stops when it knows: the p50's distribution-free confidence interval, the precision stop rule of
`smoke` and `dev` (MLPerf's fixed rule for `nightly` and `publish`), and measurement processes forked warm from a
zygote that has the runtime imported (bench.measure.zygote)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.measure.latency import (
    PROFILES,
    Profile,
    StopRule,
    median_ci,
    median_ci_ranks,
    summarize,
    time_calls,
    within_precision,
)
from bench.measure.schedule import MeasurementTimeout, close_zygotes, launcher, run_worker
from bench.measure.zygote import preload_for

REPO = Path(__file__).resolve().parents[1]
ORT_OPENER = "bench.runtimes.ort_session:open_onnx"


def coverage(n: int, lower: int) -> float:
    """P(x_(lower) <= median <= x_(n + 1 - lower)) for n samples of a continuous distribution, exactly."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(lower)) / 2**n


def test_ci_ranks_are_the_narrowest_with_95_percent_coverage():
    assert [median_ci_ranks(n) for n in range(1, 6)] == [None] * 5  # even [min, max] covers under 95%
    assert median_ci_ranks(6) == (1, 6)
    assert median_ci_ranks(10) == (2, 9)
    for n in range(6, 400):
        lower, upper = median_ci_ranks(n)
        assert upper == n + 1 - lower
        assert coverage(n, lower) >= 0.95, n
        assert coverage(n, lower + 1) < 0.95, n  # one rank narrower would not do


def test_ci_ranks_past_the_exact_range_still_cover_95_percent():
    for n in (1001, 2500, 10_000):
        lower, _ = median_ci_ranks(n)
        assert 0.95 <= coverage(n, lower) < 0.96, n


def test_ci_covers_the_true_median_of_a_skewed_distribution():
    rng = np.random.default_rng(0)
    true_median = 1.0  # lognormal(0, 0.5): median exp(0)
    trials, covered = 2000, 0
    for _ in range(trials):
        values = sorted(rng.lognormal(0.0, 0.5, size=40).tolist())
        lo, hi = median_ci(values)
        covered += lo <= true_median <= hi
    assert 0.94 <= covered / trials <= 0.985  # 96.2% nominal at n = 40 (the ranks are discrete)


def test_summarize_keeps_the_interval_around_the_p50():
    stats = summarize([3.0, 1.0, 2.0, 5.0, 4.0, 6.0, 7.0])
    lo, hi = stats["p50_ci"]
    assert lo <= stats["p50"] <= hi
    assert (lo, hi) == (1.0, 7.0)  # n = 7: ranks 1 and 7
    assert summarize([1.0, 2.0, 3.0])["p50_ci"] is None


def test_precision_is_both_ends_within_the_fraction():
    tight = sorted([100.0 + 0.1 * i for i in range(21)])  # p50 101, ranks 6 and 16: 100.5 .. 101.5
    assert within_precision(tight, 0.02)
    assert not within_precision(tight, 0.001)
    assert not within_precision([1.0] * 5, 0.5)  # no 95% interval from 5 samples


def run_rule(profile: Profile, stream, seconds_per_call: float = 0.001) -> tuple[int, str]:
    """Feed `stream` to a StopRule with a synthetic clock; (samples taken, reason)."""
    rule, samples = StopRule(profile), []
    for value in stream:
        samples.append(value)
        if rule.done(samples, len(samples) * seconds_per_call):
            return len(samples), str(rule.reason)
    raise AssertionError("never stopped")


def endless(values):
    while True:
        yield from values


def test_precision_rule_stops_once_the_interval_is_tight_after_the_minimum_count():
    dev = PROFILES["dev"].per_process()  # 10 calls and 0.1 s per process, then the 2% rule
    assert (dev.min_iterations, dev.min_duration_s) == (10, pytest.approx(0.1))
    assert run_rule(dev, endless([1.0, 1.001, 0.999]), seconds_per_call=0.05) == (10, "precision")
    assert run_rule(dev, endless([1.0, 1.001, 0.999]), seconds_per_call=0.001) == (100, "precision")
    smoke = PROFILES["smoke"]  # 5 calls, but a 95% interval needs 6
    assert run_rule(smoke, endless([1.0]), seconds_per_call=0.05) == (6, "precision")


def test_precision_rule_keeps_timing_a_noisy_artifact_until_it_knows():
    rng = random.Random(0)
    noisy = (rng.lognormvariate(0, 0.3) for _ in iter(int, 1))  # ~30% spread: hundreds of samples for 2%
    n, reason = run_rule(PROFILES["dev"].per_process(), noisy)
    assert reason == "precision"
    assert n > 200


def test_precision_rule_never_passes_the_maximum_duration():
    wide = endless([1.0, 2.0])  # the median's interval never narrows to 2%
    profile = PROFILES["smoke"]
    n, reason = run_rule(profile, wide, seconds_per_call=0.01)
    assert reason == "max_duration"
    assert n == math.ceil(profile.max_duration_s / 0.01)


@pytest.mark.parametrize("name", ["nightly", "publish"])
def test_nightly_and_publish_keep_the_fixed_minimum_duration(name):
    profile = PROFILES[name]
    assert profile.precision is None and profile.min_duration_s > 0
    share = profile.per_process()
    n, reason = run_rule(share, endless([1.0]), seconds_per_call=0.001)  # precise from the start: irrelevant
    assert reason == "min_reached"
    assert n == max(share.min_iterations, math.ceil(share.min_duration_s / 0.001))


def test_smoke_and_dev_use_the_precision_rule_in_every_process():
    for name in ("smoke", "dev"):
        profile = PROFILES[name]
        assert profile.precision == 0.02 and profile.per_process().min_duration_s == pytest.approx(0.1)
        assert profile.per_process().precision == 0.02


def test_time_calls_reports_the_rule_that_stopped_it():
    profile = Profile(0, 0.0, min_iterations=10**9, min_duration_s=0, max_duration_s=0.02, precision=0.02)
    samples, _, reason = time_calls(lambda: None, lambda: None, profile)
    assert reason == "max_duration" and samples


# -- warm processes ------------------------------------------------------------------------------------------------


def test_the_onnx_zygote_imports_no_torch_and_the_torch_zygote_does():
    assert "torch" in preload_for("bench.runtimes.torch_session:open_pickled_module")
    assert "onnxruntime" in preload_for(ORT_OPENER)
    code = (
        "import importlib, sys; from bench.measure.zygote import preload_for;"
        f"[importlib.import_module(m) for m in preload_for({ORT_OPENER!r})];"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    # a plugin's opener: only the worker's own modules before the fork, the rest imported in the child
    assert preload_for("my_plugin.runtime:open") == ("bench.measure.worker",)


def sleepy_opener(path, device, threads, options):  # an opener that hangs (for the timeout below)
    time.sleep(120)


def spec_for(tmp_path: Path, session: str, path: Path, sha256: str | None = None) -> dict:
    profile = dataclasses.asdict(PROFILES["smoke"])
    return {
        "session": session,
        "path": str(path),
        "device": "cpu",
        "threads": 1,
        "batch_sizes": [1, 4],
        "input_shape": [4],
        "seed": 0,
        "memory": True,
        "options": {},
        "sha256": sha256,
        "profile": profile,
    }


@pytest.fixture
def identity_onnx(tmp_path) -> Path:
    """A weightless ONNX graph over (batch, 4) inputs."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("how", ["zygote", "subprocess"])
def test_a_worker_measures_alike_forked_warm_or_started_cold(tmp_path, identity_onnx, how):
    result = run_worker(spec_for(tmp_path, ORT_OPENER, identity_onnx), threads=1, how=how)
    for batch in ("1", "4"):
        stats = result["latency_ms"][batch]
        assert stats["n"] == len(result["samples_ms"][batch]) >= 5
        assert stats["stop"] in ("precision", "max_duration")
    assert result["peak_rss_mb"] > 0 and result["load_s"] >= 0


def test_a_failing_worker_reports_its_error_from_the_zygote(tmp_path, identity_onnx):
    spec = spec_for(tmp_path, ORT_OPENER, identity_onnx, sha256="0" * 64)
    with pytest.raises(RuntimeError, match="altered or truncated since export"):
        run_worker(spec, threads=1, how="zygote")
    # the zygote survives a failed child: the next artifact is measured
    assert run_worker(spec_for(tmp_path, ORT_OPENER, identity_onnx), threads=1, how="zygote")["latency_ms"]


def test_a_hanging_worker_forked_from_the_zygote_is_killed(tmp_path, identity_onnx, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the child imports this module's opener
    spec = spec_for(tmp_path, f"{__name__}:sleepy_opener", identity_onnx)
    with pytest.raises(MeasurementTimeout, match="timeout after 3 s"):
        run_worker(spec, threads=1, timeout_s=3, how="zygote")
    close_zygotes()


def test_the_launcher_is_chosen_by_the_environment(monkeypatch):
    monkeypatch.setenv("BENCH_MEASURE_LAUNCHER", "subprocess")
    assert launcher() == "subprocess"
    monkeypatch.delenv("BENCH_MEASURE_LAUNCHER")
    assert launcher() == "zygote"
    monkeypatch.setenv("BENCH_MEASURE_LAUNCHER", "spawn")
    with pytest.raises(ValueError, match="expected one of zygote, subprocess"):
        launcher()


def test_the_record_keeps_the_interval():
    from bench.assemble import _latency

    worker = summarize([1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.0]) | {"warmup_s": 0.1, "timer": "x", "stop": "precision"}
    stats = _latency({"1": worker})["1"].to_json()
    assert stats["p50_ci"] == worker["p50_ci"]
    assert "stop" not in stats and "stop" not in json.dumps(stats)


def test_a_new_environment_stops_the_least_recently_used_zygote(monkeypatch):
    from bench.measure import schedule

    monkeypatch.setattr(schedule, "MAX_ZYGOTES", 1)
    modules = preload_for("my_plugin.runtime:open")  # the worker's modules only: a quick start
    first = schedule.zygote_for(modules, {**os.environ, "BENCH_TEST_ENV": "1"})
    first.wait_ready()
    assert schedule.zygote_for(modules, {**os.environ, "BENCH_TEST_ENV": "1"}) is first  # kept for reuse
    second = schedule.zygote_for(modules, {**os.environ, "BENCH_TEST_ENV": "2"})
    second.wait_ready()
    assert first.proc.poll() is not None and second.proc.poll() is None
    close_zygotes()
    assert second.proc.poll() is not None
