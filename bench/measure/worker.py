"""Measure one deployed artifact in a fresh process: the runtime up with no model (the baseline of the model's
share of the memory), load, first call, memory pass, then latency per batch size.

Run as `python -m bench.measure.worker SPEC.json RESULT.json`. A fresh process per artifact (as
optimum-benchmark's process launcher does) keeps one artifact's allocations out of another's peak memory and
times the load as a deployment would see it. ONNX artifacts are opened without importing PyTorch.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure.latency import Profile, summarize, time_calls, time_calls_cuda
from bench.measure.memory import PeakRSS
from bench.measure.sessions import open_session, warm_runtime

REFERENCE_SIZE = 256  # a float32 matmul of this size: about a millisecond on a laptop core


def reference_ms(rng: np.random.Generator, calls: int = 25) -> list[float]:
    """Times of a fixed workload (a BLAS matmul on the same pinned threads), so that an artifact's latency can be
    read relative to the machine's speed at that moment: drift between runs moves both alike."""
    a = rng.random((REFERENCE_SIZE, REFERENCE_SIZE), dtype=np.float32)
    b = rng.random((REFERENCE_SIZE, REFERENCE_SIZE), dtype=np.float32)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        a @ b
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One process's measurement of one artifact (its share of the profile); the parent pools the processes."""
    profile = Profile(**spec["profile"])
    batch_sizes = [int(b) for b in spec["batch_sizes"]]
    rng = np.random.default_rng(spec.get("seed", 0))
    shape = tuple(spec["input_shape"])
    result: dict[str, Any] = {}
    marks = [("start", time.perf_counter())]  # the phases' ends, for `phases_s`: where a process's time went
    # The runtime first, with no model (imports, thread pools, allocator, device context, as the opener's
    # `warms_up` says): the RSS then is the baseline of the model's own share, `model_memory_mb`. For an eager
    # 90k-parameter CNN the process peak is ~550 MB, nearly all of it `import torch`.
    with PeakRSS() as runtime_peak:
        t0 = time.perf_counter()
        runtime = warm_runtime(spec["session"], spec["device"], spec.get("threads"), spec.get("options"))
        result["runtime_warmup_s"] = time.perf_counter() - t0
    result["process_start_rss_mb"] = runtime_peak.start_mb
    cuda_baseline = _cuda_allocated(spec)  # bytes the runtime holds on the GPU with no model (None off CUDA)
    with PeakRSS() as load_peak:
        t0 = time.perf_counter()
        session = open_session(
            spec["session"],
            Path(spec["path"]),
            spec["device"],
            spec.get("threads"),
            spec.get("options"),
            spec.get("sha256"),
        )
        result["load_s"] = time.perf_counter() - t0
    result["baseline_rss_mb"] = load_peak.start_mb  # the runtime up, no model yet
    if session.min_warmup_iterations > profile.warmup_iterations:
        profile = dataclasses.replace(profile, warmup_iterations=session.min_warmup_iterations)
    inputs = {b: session.prepare(rng.random((b, *shape), dtype=np.float32)) for b in batch_sizes}
    largest = max(batch_sizes)
    marks.append(("load", time.perf_counter()))
    reference = reference_ms(rng)
    marks.append(("reference", time.perf_counter()))

    t0 = time.perf_counter()
    session.run(inputs[batch_sizes[0]])
    session.sync()
    result["first_call_ms"] = (time.perf_counter() - t0) * 1e3

    # Memory pass, apart from the timed pass: peak RSS while running the largest batch (one process of the
    # artifact's does it; `memory: false` in the suite skips it and reports the load's peak only).
    cuda = session.torch_cuda
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    marks.append(("first_call", time.perf_counter()))
    with PeakRSS() as peak:
        for _ in range(max(3, profile.min_iterations // 4) if spec.get("memory", True) else 0):
            session.run(inputs[largest])
            session.sync()
    result["peak_rss_mb"] = max(peak.mb, load_peak.mb, runtime_peak.mb)
    result["inference_rss_delta_mb"] = max(0.0, peak.mb - load_peak.start_mb)
    # The model's share: the highest RSS while loading and running it, over the RSS of the runtime with no model.
    result["model_memory_mb"] = max(0.0, max(peak.mb, load_peak.mb) - load_peak.start_mb)
    if cuda:
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if cuda_baseline is not None:  # the peak since the reset includes what stayed allocated from the load
            result["model_gpu_mb"] = max(0.0, (torch.cuda.max_memory_allocated() - cuda_baseline) / 2**20)

    latency: dict[str, Any] = {}
    raw: dict[str, list[float]] = {}
    marks.append(("memory", time.perf_counter()))
    for b in batch_sizes:
        x = inputs[b]
        if cuda:  # CUDA events time the device; the host wall time (synchronised) is kept beside it
            samples, wall, warmup_s, stop = time_calls_cuda(lambda x=x: session.run(x), profile)
            latency[str(b)] = summarize(samples) | {
                "warmup_s": warmup_s,
                "timer": "cuda_events",
                "stop": stop,
                "wall_p50": summarize(wall)["p50"],
            }
        else:
            samples, warmup_s, stop = time_calls(lambda x=x: session.run(x), session.sync, profile)
            latency[str(b)] = summarize(samples) | {"warmup_s": warmup_s, "timer": "perf_counter", "stop": stop}
        raw[str(b)] = samples
    result["latency_ms"] = latency
    result["samples_ms"] = raw
    p50 = latency[str(largest)]["p50"]
    result["throughput_sps"] = largest / (p50 / 1e3) if p50 > 0 else None
    result["throughput_batch"] = largest
    # The fastest of the reference calls before and after the timed ones: stalls (another process taking a core from
    # a spinning thread pool: 0.2 ms became 13 ms here) only ever add time, so the minimum tracks the machine's speed.
    marks.append(("latency", time.perf_counter()))
    result["reference_ms"] = float(min(reference + reference_ms(rng)))
    marks.append(("reference_2", time.perf_counter()))
    result["phases_s"] = {name: end - begin for (_, begin), (name, end) in itertools.pairwise(marks)}
    result.update(session.details())
    del runtime  # held until here: what the runtime's warm-up keeps alive belongs to the baseline
    return result


def _cuda_allocated(spec: dict[str, Any]) -> int | None:
    """Bytes PyTorch's allocator holds on the current CUDA device (the one `max_memory_allocated` reads) when the
    spec's device is CUDA and torch is already imported (a PyTorch session's warm-up imports it; an ONNX one never
    does, and this must not import it); else None."""
    torch = sys.modules.get("torch")
    if torch is None or not str(spec["device"]).startswith("cuda") or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.memory_allocated())


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = measure(spec)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
