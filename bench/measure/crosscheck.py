"""Re-measure a run's artifacts outside the harness: a bare loop (`session.run` for ONNX Runtime, a module call
under `torch.inference_mode` for PyTorch) on the same files and batch, side by side with the recorded p50.

Each artifact runs in a fresh process, like the harness's own measurement, so the two figures are comparable.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.record import CellRecord

BARE_FORMATS = ("onnx", "torch", "torchscript")  # the formats BARE_LOOP opens
BARE_LOOP = r"""
import json, statistics, sys, time
import numpy as np
fmt, path, batch, shape, threads, seconds = json.loads(sys.argv[1])
x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
if fmt == "onnx":
    import onnxruntime as ort
    opts = ort.SessionOptions(); opts.intra_op_num_threads = threads; opts.inter_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    call = lambda: session.run(None, {name: x})
else:
    import torch
    torch.set_num_threads(threads)
    module = torch.jit.load(path) if fmt == "torchscript" else torch.load(path, weights_only=False)
    module.eval()
    t = torch.from_numpy(x)
    def call():
        with torch.inference_mode():
            module(t)
for _ in range(5):
    call()
samples, end = [], time.perf_counter() + seconds
while time.perf_counter() < end or len(samples) < 10:
    t0 = time.perf_counter_ns(); call(); samples.append((time.perf_counter_ns() - t0) / 1e6)
print(json.dumps({"p50": statistics.median(samples), "n": len(samples)}))
"""


def bare_p50(fmt: str, path: Path, batch: int, shape: list[int], threads: int, seconds: float) -> dict[str, Any]:
    """p50 (ms) of a bare loop over the artifact at `path`, in a fresh interpreter."""
    from bench.measure.sessions import pin_threads_env
    from bench.userimport import subprocess_env

    args = json.dumps([fmt, str(path), batch, shape, threads, seconds])
    with tempfile.TemporaryDirectory(prefix="bench-crosscheck-") as tmp:  # `-c` puts the cwd first on the path
        proc = subprocess.run(
            [sys.executable, "-c", BARE_LOOP, args],
            capture_output=True,
            text=True,
            env=subprocess_env(pin_threads_env(threads)),
            cwd=tmp,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"bare loop failed on {path}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def crosscheck(
    records: list[CellRecord], stage_dir: Callable[[str, str], Path], batch: str, seconds: float
) -> list[dict[str, Any]]:
    """One row per distinct artifact with a recorded p50 at `batch`: harness p50, bare p50, their ratio.

    The bare loops are written here, independently of the harness's sessions, for the formats they know; an
    artifact of another format (a plugin's) is listed without a bare figure."""
    rows, seen = [], set()
    for r in records:
        stats = (r.latency_ms or {}).get(batch)
        if r.status != "ok" or not stats or r.artifact is None or r.artifact.path in seen:
            continue
        seen.add(r.artifact.path)
        labels = r.labels or {}
        row: dict[str, Any] = {
            "artifact": "/".join(str(labels.get(k)) for k in ("model", "recipe", "compression", "runtime")),
            "format": r.artifact.format,
            "harness_p50_ms": stats.p50,
            "bare_p50_ms": None,
            "ratio": float("nan"),
            "bare_n": 0,
            "seconds": 0.0,
        }
        rows.append(row)
        if r.artifact.format not in BARE_FORMATS:
            continue
        threads = (r.measurement.threads if r.measurement else None) or 1
        start = time.perf_counter()
        data_meta = stage_dir(str(r.cell_id), "data") / "meta.json"
        in_shape = json.loads(data_meta.read_text())["in_shape"]
        bare = bare_p50(r.artifact.format, Path(r.artifact.path), int(batch), in_shape, threads, seconds)
        row.update(
            bare_p50_ms=bare["p50"],
            ratio=stats.p50 / bare["p50"] if bare["p50"] and stats.p50 else float("nan"),
            bare_n=bare["n"],
            seconds=time.perf_counter() - start,
        )
    return rows


def format_rows(rows: list[dict[str, Any]], batch: str) -> str:
    if not rows:
        return f"no ok cell has a latency at batch {batch}"
    width = max(len(r["artifact"]) for r in rows)
    lines = [f"{'artifact':<{width}}  harness p50  bare p50  harness/bare   (batch {batch})"]
    lines += [
        f"{r['artifact']:<{width}}  {r['harness_p50_ms']:9.3f} ms {r['bare_p50_ms']:7.3f} ms  {r['ratio']:.2f}"
        if r["bare_p50_ms"] is not None
        else f"{r['artifact']:<{width}}  {r['harness_p50_ms']:9.3f} ms  (no bare loop for format {r['format']})"
        for r in rows
    ]
    ratios = [r["ratio"] for r in rows if r["bare_p50_ms"] is not None] or [float("nan")]
    lines.append(
        f"{len(rows)} artifacts; median ratio {statistics.median(ratios):.2f}, "
        f"range {min(ratios):.2f}-{max(ratios):.2f}"
    )
    return "\n".join(lines)
