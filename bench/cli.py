"""The `bench` command line. Exit codes: 0 success, 1 a cell failed or a regression was found, 2 bad input."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from bench.errors import BenchInputError

DEFAULT_SUITE = "suites/default.yaml"
DEFAULT_CACHE = Path("results/cache")


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(p) for p in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 1/4, got '{text}'") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"shard index must be in 1..{count}, got {index}")
    return index, count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite into a run directory and write its HTML report")
    run.add_argument("suite", nargs="?", default=DEFAULT_SUITE, help=f"suite YAML (default: {DEFAULT_SUITE})")
    run.add_argument("--out", type=Path, help="run directory (default: results/<suite>-<time>)")
    run.add_argument("--resume", action="store_true", help="finish the cells missing from --out")
    run.add_argument("--shard", type=_shard, help="run shard I of N (1-based), e.g. 2/4")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the suite's device")
    run.add_argument("--profile", choices=("smoke", "dev", "nightly", "publish"), help="measurement profile")
    run.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"stage cache (default: {DEFAULT_CACHE})")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    lst = sub.add_parser("list", help="list the cells of a suite, with skip reasons")
    lst.add_argument("suite", nargs="?", default=DEFAULT_SUITE)
    lst.add_argument("--device", choices=("cpu", "cuda", "auto"))

    rep = sub.add_parser("report", help="write the HTML report of one or more run directories")
    rep.add_argument("run_dirs", nargs="+", type=Path)
    rep.add_argument("-o", "--output", type=Path, help="output file (default: RUN_DIR/report.html)")
    rep.add_argument("--baseline", type=Path, help="a run directory to compare against")

    cmp_ = sub.add_parser("compare", help="compare two runs; exit 1 on a regression")
    cmp_.add_argument("baseline", type=Path)
    cmp_.add_argument("candidate", type=Path)
    cmp_.add_argument("--latency-threshold", type=float, default=0.10, help="relative p50 slowdown (0.10: 10%%)")
    cmp_.add_argument("--accuracy-threshold", type=float, default=0.01, help="absolute accuracy drop (0.01)")

    chk = sub.add_parser("crosscheck", help="re-measure a run's artifacts with bare loops, side by side")
    chk.add_argument("run_dir", type=Path)
    chk.add_argument("--batch", default=None, help="batch size (default: the largest measured)")
    chk.add_argument("--seconds", type=float, default=2.0, help="time per artifact for the bare loop")

    sub.add_parser("env", help="print the environment fingerprint")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from bench.report import render_report
    from bench.runner import default_run_dir, run_suite
    from bench.suite import load_suite
    from bench.summary import summary_table

    suite = load_suite(args.suite)
    if args.profile:
        suite.measurement.profile = args.profile
    run_dir = args.out or default_run_dir(suite)
    try:
        meta = run_suite(
            suite,
            run_dir,
            cache_dir=args.cache,
            resume=args.resume,
            shard=args.shard,
            device=args.device,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; the finished cells are in {run_dir}/cells.jsonl. Resume with:\n"
            f"  bench run {args.suite} --out {run_dir} --resume",
            file=sys.stderr,
        )
        return 130
    report = render_report([run_dir], run_dir / "report.html")
    from bench.results import load_run

    print(summary_table(load_run(run_dir).records))
    for v in meta["invariants"]["violations"]:
        print(f"invariant violated: {v['check']}: {v['artifact']}: {v['detail']}")
    counts = meta["counts"]
    print(f"\n{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed; run directory: {run_dir}")
    print(f"report: {report}")
    return 1 if counts["failed"] else 0


def _cmd_list(args: argparse.Namespace) -> int:
    from bench.matrix import build_cells
    from bench.runner import resolve_device
    from bench.suite import load_suite

    suite = load_suite(args.suite)
    cells = build_cells(suite, resolve_device(args.device or suite.device))
    width = max((len(c.cell_id) for c in cells), default=0)
    for cell in cells:
        status = f"skip: {cell.skip_reason}" if cell.skip_reason else "run"
        print(f"{cell.cell_id:<{width}}  {status}")
    skipped = sum(1 for c in cells if c.skip_reason)
    print(f"{len(cells)} cells: {len(cells) - skipped} to run, {skipped} skipped")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bench.report import render_report

    for run_dir in [*args.run_dirs, *([args.baseline] if args.baseline else [])]:
        if not (run_dir / "run.json").is_file():
            raise BenchInputError("not a run directory (no run.json)", file=str(run_dir))
    out = args.output or args.run_dirs[0] / "report.html"
    print(render_report(args.run_dirs, out, baseline=args.baseline))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from bench.compare import compare_runs, format_comparison
    from bench.results import load_run

    rows = compare_runs(
        load_run(args.baseline), load_run(args.candidate), args.latency_threshold, args.accuracy_threshold
    )
    print(format_comparison(rows))
    return 1 if any(r["regression"] for r in rows) else 0


def _cmd_crosscheck(args: argparse.Namespace) -> int:
    from bench.measure.crosscheck import crosscheck, format_rows
    from bench.results import load_run

    run = load_run(args.run_dir)
    batches = sorted({b for r in run.records for b in (r.latency_ms or {})}, key=int)
    if not batches:
        raise BenchInputError("no cell of this run has a latency to compare", file=str(args.run_dir))
    batch = str(args.batch) if args.batch else batches[-1]
    if batch not in batches:
        raise BenchInputError(f"no latency at batch {batch}; measured: {', '.join(batches)}", field="--batch")
    print(format_rows(crosscheck(run.records, run.cache_dir, batch, args.seconds), batch))
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from bench.env import environment

    print(json.dumps(environment(), indent=2))
    return 0


COMMANDS: dict[str, Any] = {
    "run": _cmd_run,
    "list": _cmd_list,
    "report": _cmd_report,
    "compare": _cmd_compare,
    "crosscheck": _cmd_crosscheck,
    "env": _cmd_env,
}


def main(argv: list[str] | None = None) -> int:
    # torch's C++ deprecation notices (quantized tensors) would otherwise interleave with the progress bar
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # torch.jit / torch.ao notices: deprecated upstream, still used behind their plugins
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return COMMANDS[args.command](args)
    except BenchInputError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
