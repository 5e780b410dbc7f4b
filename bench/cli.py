"""The `bench` command line. Exit codes: 0 success, 1 a cell failed, a gate failed or a regression was found,
2 bad input."""

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


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value:g}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


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
    run.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a gate limit overriding the suite's top-level gate (repeatable): max_latency_ms=1:p99:100, "
        "min_clean_accuracy=0.9, min_robust_accuracy=0.3, budget=0.99, max_size_mb=50, max_memory_mb=2000",
    )
    run.add_argument(
        "--remeasure", action="store_true", help="measure latency afresh even for artifacts whose timing is cached"
    )
    run.add_argument(
        "--cell-timeout", type=_positive_seconds, help="stop a cell after this many seconds (overrides limits:)"
    )
    run.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the stages run: this process (default) or Ray tasks (pip install -e '.[ray]'; docs/ray.md)",
    )
    run.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="the Ray cluster to join: 'auto' or HOST:PORT (default: start a local Ray instance)",
    )

    lst = sub.add_parser("list", help="list the cells of a suite, with skip reasons")
    lst.add_argument("suite", nargs="?", default=DEFAULT_SUITE)
    lst.add_argument("--device", choices=("cpu", "cuda", "auto"))

    rep = sub.add_parser("report", help="write the HTML report of one or more run directories")
    rep.add_argument("run_dirs", nargs="+", type=Path)
    rep.add_argument("-o", "--output", type=Path, help="output file (default: RUN_DIR/report.html)")
    rep.add_argument("--baseline", type=Path, help="a run directory to compare against")
    rep.add_argument(
        "--plotly-src",
        metavar="URL",
        help="load plotly.js from this URL or relative path instead of inlining it (a page 4-5 MB smaller)",
    )

    cmp_ = sub.add_parser("compare", help="compare two runs cell by cell; exit 1 on a regression")
    cmp_.add_argument("baseline", type=Path)
    cmp_.add_argument("candidate", type=Path)
    for name, what, default in (
        ("latency", "relative slowdown that, when significant, is a regression (0.10: 10%%)", "0.10"),
        ("accuracy", "absolute accuracy drop that, when significant, is a regression (0.02: 2 points)", "0.02"),
        ("size", "relative growth of the artifact's size that is a regression", "0.10"),
        ("memory", "relative growth of the peak memory that is a regression", "0.25"),
    ):
        where = f"default: the candidate suite's gate: {name}_threshold, else {default}"
        where = where if name in ("latency", "accuracy") else f"default: {default}"
        cmp_.add_argument(f"--{name}-threshold", type=float, metavar="X", help=f"{what}; {where}")
    cmp_.add_argument("--force", action="store_true", help="compare cells whose environments differ")
    cmp_.add_argument("--json", type=Path, metavar="FILE", help="also write the rows and summary as JSON")
    cmp_.add_argument("--markdown", type=Path, metavar="FILE", help="also write a pull-request comment")

    chk = sub.add_parser("crosscheck", help="re-measure a run's artifacts with bare loops, side by side")
    chk.add_argument("run_dir", type=Path)
    chk.add_argument("--batch", default=None, help="batch size (default: the largest measured)")
    chk.add_argument("--seconds", type=float, default=2.0, help="time per artifact for the bare loop")

    mrg = sub.add_parser("merge", help="merge the run directories of a suite's shards into one run directory")
    mrg.add_argument("shard_dirs", nargs="+", type=Path, help="the run directories of shards 1/N .. N/N")
    mrg.add_argument("--out", type=Path, required=True, help="the merged run directory (must not exist yet)")

    pub = sub.add_parser("publish", help="add run directories to a static site of reports and trends")
    pub.add_argument("run_dirs", nargs="+", type=Path, help="the run directories to add (published ones are kept)")
    pub.add_argument("--site", type=Path, required=True, help="the site's folder (created when missing)")
    pub.add_argument("--keep", type=_positive_int, metavar="N", help="keep the newest N runs, delete older reports")

    sub.add_parser("env", help="print the environment fingerprint")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from bench.gates import with_overrides
    from bench.report import render_report
    from bench.runner import default_run_dir, run_suite
    from bench.suite import load_suite

    suite = load_suite(args.suite)
    if args.profile:
        suite.measurement.profile = args.profile
    suite.gate = with_overrides(suite.gate, args.gate, suite.measurement.batch_sizes)
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
            remeasure=args.remeasure,
            cell_timeout=args.cell_timeout,
            executor=args.executor,
            ray_address=args.ray_address,
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; the finished cells are in {run_dir}/cells.jsonl. Resume with:\n"
            f"  bench run {args.suite} --out {run_dir} --resume",
            file=sys.stderr,
        )
        return 130
    report = render_report([run_dir], run_dir / "report.html")
    return print_outcome(meta, run_dir, f"run directory: {run_dir}", report)


def print_outcome(meta: dict[str, Any], run_dir: Path, where: str, report: Path) -> int:
    """The end of `bench run` and `bench merge`: the summary table, violated invariants, failed (then
    inconclusive) gates, the counts; the exit code: 1 when a cell or a gate failed."""
    from bench.gates import gate_lines
    from bench.results import load_run
    from bench.summary import summary_table

    records = load_run(run_dir).records
    print(summary_table(records))
    for v in meta["invariants"]["violations"]:
        print(f"invariant violated: {v['check']}: {v['artifact']}: {v['detail']}")
    for line in gate_lines(records):  # failed gates, then inconclusive ones (a warning: they do not fail the run)
        print(line)
    counts, gates = meta["counts"], meta.get("gates") or {}
    gated = f"{gates['fail']} gates failed, {gates['inconclusive']} inconclusive; " if gates.get("checked") else ""
    print(f"\n{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed; {gated}", end="")
    print(where)
    print(f"report: {report}")
    return 1 if counts["failed"] or gates.get("fail") else 0


def _cmd_list(args: argparse.Namespace) -> int:
    from bench.matrix import build_cells
    from bench.preflight import check_suite
    from bench.runner import resolve_device
    from bench.suite import load_suite

    suite = load_suite(args.suite)
    cells = build_cells(suite, resolve_device(args.device or suite.device))
    check_suite(suite, cells)  # what the suite asks of its data (bench.preflight): `bench run` checks the same
    width = max((len(c.cell_id) for c in cells), default=0)
    lines = (f"{c.cell_id:<{width}}  {f'skip: {c.skip_reason}' if c.skip_reason else 'run'}" for c in cells)
    if cells:
        print("\n".join(lines))  # one write: a 20,000-cell suite lists in well under a second
    models = {cell.model.label: cell.model.config for cell in cells}
    for label, config in models.items():  # the one transformation the harness may add to a model, never silently
        inputs = "dataset mean/std normalisation inside the model" if config.normalize else "[0, 1] pixels as they are"
        print(f"model {label}: normalize={str(config.normalize).lower()} ({inputs})")
    skipped = sum(1 for c in cells if c.skip_reason)
    print(f"{len(cells)} cells: {len(cells) - skipped} to run, {skipped} skipped")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bench.report import render_report

    for run_dir in [*args.run_dirs, *([args.baseline] if args.baseline else [])]:
        if not (run_dir / "run.json").is_file():
            raise BenchInputError("not a run directory (no run.json)", file=str(run_dir))
    out = args.output or args.run_dirs[0] / "report.html"
    print(render_report(args.run_dirs, out, baseline=args.baseline, plotly_src=args.plotly_src))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from bench.compare import compare_runs, load_evidence, resolve_thresholds
    from bench.compare_format import terminal, write_json, write_markdown

    baseline, candidate = load_evidence(args.baseline), load_evidence(args.candidate)
    thresholds = resolve_thresholds(
        candidate.meta,
        latency=args.latency_threshold,
        accuracy=args.accuracy_threshold,
        size=args.size_threshold,
        memory=args.memory_threshold,
    )
    comparison = compare_runs(baseline, candidate, thresholds, force=args.force)
    print(terminal(comparison))
    if args.json:
        write_json(comparison, args.json)
    if args.markdown:
        write_markdown(comparison, args.markdown)
    return 1 if comparison.regressions else 0


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
    print(format_rows(crosscheck(run.records, run.stage_dir, batch, args.seconds), batch))
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from bench.merge import REPORT_FILE, merge_shards

    meta = merge_shards(args.shard_dirs, args.out)
    return print_outcome(meta, args.out, f"merged {len(meta['shards'])} shards into {args.out}", args.out / REPORT_FILE)


def _cmd_publish(args: argparse.Namespace) -> int:
    from bench.publish import publish

    result = publish(args.run_dirs, args.site, keep=args.keep)
    for run in result.added:
        print(f"published {run}")
    for run in result.already:
        print(f"already published: {run}")
    for run in result.removed:
        print(f"removed (--keep {args.keep}): {run}")
    print(f"site: {result.site / 'index.html'} ({result.runs} runs)")
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
    "merge": _cmd_merge,
    "publish": _cmd_publish,
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
        message = " ".join(part.strip() for part in str(exc).splitlines())  # one line, whatever the message holds
        print(f"bench: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`bench list SUITE | head`): end quietly, as Unix tools do; point stdout at devnull
        # so that the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
