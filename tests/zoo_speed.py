"""Does pruning pay off on ONNX Runtime? A reproducible timing of the harness's own ONNX artifacts (docs/zoo.md).

    python -m tests.zoo_speed --out results/zoo-speed            # runs the suite below, then times its artifacts
    python -m tests.zoo_speed --run results/zoo-speed/run        # times the artifacts of a run already made

The suite is the zoo's setting (suites/zoo.yaml: synthetic 3x32x32 data, the same recipe) for MobileNetV3-Small and
EfficientNet-B0, unpruned and pruned at ratio 0.3 with `round_to` 8 (the default) and 1, exported to ONNX by the
`onnxruntime` runtime. The artifacts are found through the run (`bench.load_run(...).artifact(cell_id)`, i.e. the
cell records and the cache), opened as bare `onnxruntime.InferenceSession`s with the same thread settings, and
timed with plain `session.run` loops at one batch size, interleaved: every round times each session of a model once,
in a rotated order, and a ratio (pruned / unpruned) is taken within each round. The median of the rounds is
printed, as a Markdown table, with how many convolutions ONNX Runtime runs in its blocked channel layout (NCHWc)
and how many it leaves in plain NCHW on this machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mobilenet_v3_small", "efficientnet_b0")
VARIANTS = ("none", "prune-0.3", "prune-0.3-round_to=1")  # the unpruned baseline first

SUITE: dict[str, Any] = {
    "name": "zoo-speed",
    "description": "pruned vs unpruned ONNX artifacts of two zoo models (tests/zoo_speed.py)",
    "seed": 0,
    "device": "cpu",
    "models": list(MODELS),
    "compressions": [
        "none",
        {"name": "prune", "ratio": 0.3, "label": "prune-0.3"},
        {"name": "prune", "ratio": 0.3, "round_to": 1, "label": "prune-0.3-round_to=1"},
    ],
    "runtimes": ["onnxruntime"],
    "attacks": ["none"],
    "measurement": {"profile": "smoke", "batch_sizes": [16]},
}


def zoo_suite() -> dict[str, Any]:
    """SUITE with suites/zoo.yaml's dataset and recipe."""
    zoo = yaml.safe_load((ROOT / "suites" / "zoo.yaml").read_text())
    return {**copy.deepcopy(SUITE), "dataset": zoo["dataset"], "recipes": zoo["recipes"]}


def cell_id(model: str, variant: str, run: Any) -> str:
    (found,) = [r.cell_id for r in run.records if r.cell_id.startswith(f"{model}/") and f"/{variant}/" in r.cell_id]
    return found


def open_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_calls(session: Any, feed: dict[str, np.ndarray], calls: int) -> float:
    """Median milliseconds of `calls` bare session.run calls."""
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def time_interleaved(paths: dict[str, Path], batch: int, threads: int, rounds: int, calls: int) -> dict[str, list]:
    """Per variant, the median ms of each round; every round times every session once, in a rotated order."""
    sessions = {v: open_session(p, threads) for v, p in paths.items()}
    name = next(iter(sessions.values())).get_inputs()[0].name
    x = np.random.default_rng(0).random((batch, 3, 32, 32), dtype=np.float32)
    feed = {name: x}
    for s in sessions.values():  # warm-up: allocations, kernel selection, caches
        time_calls(s, feed, max(calls // 2, 5))
    order = list(sessions)
    per_round: dict[str, list] = {v: [] for v in sessions}
    for r in range(rounds):
        for v in order[r % len(order) :] + order[: r % len(order)]:
            per_round[v].append(time_calls(sessions[v], feed, calls))
    return per_round


def conv_layouts(path: Path, threads: int) -> tuple[int, int]:
    """(convolutions ONNX Runtime runs in its blocked NCHWc layout, convolutions left in plain NCHW), read from the
    graph it optimises for this machine."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # the notice that an optimised graph is machine-specific
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node
    blocked = sum(n.op_type == "Conv" and n.domain == "com.microsoft.nchwc" for n in nodes)
    plain = sum(n.op_type in ("Conv", "FusedConv") and n.domain != "com.microsoft.nchwc" for n in nodes)
    return blocked, plain


def report(run_dir: Path, batch: int, threads: int, rounds: int, calls: int) -> str:
    import bench

    run = bench.load_run(run_dir)
    lines = [
        f"batch {batch}, {threads} intra-op thread(s), {rounds} interleaved rounds of {calls} calls per session",
        "",
        "| model | variant | params | conv widths (sample) | convs blocked / plain | ms per batch (median) "
        "| pruned / unpruned (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        ids = {v: cell_id(model, v, run) for v in VARIANTS}
        paths = {v: run.artifact(c) for v, c in ids.items()}
        per_round = time_interleaved(paths, batch, threads, rounds, calls)
        for v in VARIANTS:
            record = run.record(ids[v])
            widths = _widths(run, ids[v])
            ms = statistics.median(per_round[v])
            ratio = statistics.median(a / b for a, b in zip(per_round[v], per_round["none"], strict=True))
            spread = sorted(a / b for a, b in zip(per_round[v], per_round["none"], strict=True))
            shown = "1 (baseline)" if v == "none" else f"{ratio:.3f} (rounds {spread[0]:.3f} to {spread[-1]:.3f})"
            blocked, plain = conv_layouts(paths[v], threads)
            lines.append(f"| {model} | {v} | {record.params:,} | {widths} | {blocked} / {plain} | {ms:.3f} | {shown} |")
    return "\n".join(lines)


def _widths(run: Any, cell: str) -> str:
    """A few convolution widths of the cell's float model (the first expansions and the last 1x1)."""
    from torch import nn

    convs = [m.out_channels for m in run.model(cell).modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    return ", ".join(str(w) for w in [*convs[:4], convs[-1]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="folder for the suite, its run (OUT/run) and cache (OUT/cache)")
    where.add_argument("--run", type=Path, help="a run directory of this suite made before")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every session")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--calls", type=int, default=30, help="session.run calls per session and round")
    args = parser.parse_args(argv)
    run_dir = args.run
    if args.out is not None:
        from bench.cli import main as bench_main

        args.out.mkdir(parents=True, exist_ok=True)
        suite = args.out / "zoo-speed.yaml"
        suite.write_text(yaml.safe_dump(zoo_suite(), sort_keys=False))
        run_dir = args.out / "run"
        code = bench_main(
            ["run", str(suite), "--out", str(run_dir), "--cache", str(args.out / "cache"), "--no-progress"]
        )
        if code != 0:
            return code
    print(report(run_dir, args.batch, args.threads, args.rounds, args.calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
