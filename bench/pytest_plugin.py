"""`pytest --benchmark`: a suite's cells as pytest-benchmark benchmarks, in any repository (docs/pytest.md).

Registered through the `pytest11` entry point, so every pytest run where the package is installed loads it; it does
nothing unless `--benchmark` is given, and importing it imports neither torch nor the harness.

With `--benchmark`, collection adds one item per cell of the suite (`--suite FILE`, else the ini option
`bench_suite`, else `suites/smoke.yaml`): `<suite file>::test_cell[<cell id>]`. A cell that cannot run is collected
as skipped with its reason; `-k` selects cells by id. Running an item runs (or takes from the stage cache:
`--bench-cache`, ini `bench_cache`, default `results/cache`) the cell's stages, as `bench run` does, a group of
cells sharing a trained model at a time, then times the cell's deployed predictor at the suite's first batch size
with pytest-benchmark's own `benchmark` fixture, and fails the item on any failed suite gate.
"""

from __future__ import annotations

import inspect
import math
import os
import shlex
import types
import warnings
from pathlib import Path
from typing import Any

import pytest

DEFAULT_SUITE = "suites/smoke.yaml"
DEFAULT_CACHE = "results/cache"
CELL_ARG = "bench_cell_id"
_SUITE_KEY = pytest.StashKey["SuiteFile"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench", "bench: a suite's cells as benchmarks (bench-compress)")
    group.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="collect the suite's cells as pytest-benchmark benchmarks (one test_cell[<cell id>] item per cell)",
    )
    group.addoption(
        "--suite",
        dest="bench_suite",
        default=None,
        metavar="FILE",
        help=f"the suite run by --benchmark (default: ini bench_suite, else {DEFAULT_SUITE})",
    )
    group.addoption(
        "--bench-cache",
        dest="bench_cache",
        default=None,
        metavar="DIR",
        help=f"the stage cache of --benchmark (default: ini bench_cache, else {DEFAULT_CACHE} under the rootdir)",
    )
    parser.addini("bench_suite", "the suite file `pytest --benchmark` runs (relative to the ini file)", default="")
    parser.addini("bench_cache", "the stage cache of `pytest --benchmark` (relative to the ini file)", default="")


def _ini_path(config: pytest.Config, name: str) -> Path | None:
    value = config.getini(name)
    if not value:
        return None
    base = config.inipath.parent if config.inipath else config.rootpath
    return base / value


def suite_path(config: pytest.Config) -> Path:
    """--suite (relative to the working directory), else ini bench_suite, else suites/smoke.yaml under the rootdir."""
    option = config.getoption("bench_suite")
    if option:
        return Path(option).absolute()
    return _ini_path(config, "bench_suite") or config.rootpath / DEFAULT_SUITE


def pytest_configure(config: pytest.Config) -> None:
    _check_rootdir(config)


def _check_rootdir(config: pytest.Config) -> None:
    """`--suite FILE` (a separate word) where FILE moved pytest's rootdir or ini file: a usage error.

    pytest chooses its rootdir and ini file before it loads this plugin, so FILE then counts as a test path there: a
    suite outside the project would silently make another project's ini file the configuration (its addopts,
    testpaths, bench_cache). `--suite=FILE` is never taken for a path."""
    args = [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *config.invocation_params.args]
    pairs = [(a, args[i + 1]) for i, a in enumerate(args[:-1]) if a in ("--suite", "--bench-cache")]
    values = [value for _, value in pairs]
    if not pairs:
        return
    try:
        from _pytest.config.findpaths import determine_setup  # pytest's own rootdir rule (not a public API)

        known = {
            "inifile": config.option.inifilename,
            "override_ini": config.option.override_ini,
            "rootdir_cmd_arg": config.option.rootdir or None,
            "invocation_dir": config.invocation_params.dir,
            "config": config,
        }
        params = inspect.signature(determine_setup).parameters
        kwargs = {k: v for k, v in known.items() if k in params}
        paths = [str(a) for a in config.option.file_or_dir or []]
        chosen = determine_setup(args=[*paths, *values], **kwargs)[:2]
        meant = determine_setup(args=paths, **kwargs)[:2]
    except Exception:  # another pytest: no check rather than a wrong one
        return
    if chosen != meant:
        words = ", ".join(f"{option} {value}" for option, value in pairs)
        fixed = ", ".join(f"{option}={value}" for option, value in pairs)
        raise pytest.UsageError(
            f"{words}: pytest took the value for a test path when it chose its rootdir and ini file "
            f"({chosen[0]}, {chosen[1]} instead of {meant[0]}, {meant[1]}); write {fixed}"
        )


def cache_path(config: pytest.Config) -> Path:
    option = config.getoption("bench_cache")
    if option:
        return Path(option).absolute()
    return _ini_path(config, "bench_cache") or config.rootpath / DEFAULT_CACHE


# -- collection ---------------------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection and pytest-benchmark's --benchmark-only/-skip marks
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("benchmark", default=False):
        return
    path = suite_path(config)
    suite_file = SuiteFile.from_parent(session, path=path)
    config.stash[_SUITE_KEY] = suite_file
    items.extend(session.genitems(suite_file))


class SuiteFile(pytest.Module):
    """The suite file as a test module: its one test function, `test_cell`, is parametrized by cell id."""

    suite: Any = None
    cells: list[Any] = []  # set per instance in collect()

    def _getobj(self) -> types.ModuleType:
        module = types.ModuleType(f"bench_suite_{self.path.stem}")
        module.__file__ = str(self.path)
        module.test_cell = test_cell  # type: ignore[attr-defined]
        module.pytest_generate_tests = _generate_cells  # type: ignore[attr-defined]
        return module

    def istestfunction(self, obj: object, name: str) -> bool:
        return name == "test_cell"  # whatever the user's `python_functions` ini says

    def collect(self) -> Any:
        from bench.errors import BenchInputError
        from bench.matrix import build_cells
        from bench.runner import resolve_device
        from bench.suite import load_suite

        if not self.path.is_file():
            raise self.CollectError(f"--benchmark: suite file {self.path} not found (set --suite or ini bench_suite)")
        try:
            self.suite = load_suite(self.path)
            self.cells = build_cells(self.suite, resolve_device(self.suite.device))
        except BenchInputError as exc:
            raise self.CollectError(f"bench: {exc}") from None
        return super().collect()


def _generate_cells(metafunc: pytest.Metafunc) -> None:
    if CELL_ARG not in metafunc.fixturenames:
        return
    suite_file = metafunc.definition.getparent(SuiteFile)
    assert suite_file is not None
    params = [
        pytest.param(c.cell_id, id=c.cell_id, marks=[pytest.mark.skip(reason=c.skip_reason)] if c.skip_reason else [])
        for c in suite_file.cells
    ]
    metafunc.parametrize(CELL_ARG, params)


# -- running ------------------------------------------------------------------------------------------------------


class CellRunner:
    """Runs a suite's selected cells as `bench run` does (bench.runner.run_group: a group of cells sharing a trained
    model at a time, their artifacts measured together) and keeps each cell's record and stages."""

    def __init__(self, suite: Any, cells: list[Any], selected: set[str], cache_dir: Path, work_dir: Path) -> None:
        from bench.cache import StageCache
        from bench.env import environment
        from bench.pipeline import Pipeline
        from bench.preflight import check_suite
        from bench.runner import EvidenceWriter, pin_threads, resolve_device

        self.suite = suite
        self.device = resolve_device(suite.device)
        self.threads = pin_threads(suite)
        self.environment = environment()
        self.cells = {c.cell_id: c for c in cells}
        self.selected = selected
        self.pipeline = Pipeline(
            suite, StageCache(cache_dir), work_dir / "stages.jsonl", self.device, self.threads, self.environment
        )
        self.pipeline.use_datasets(check_suite(suite, cells))
        self.evidence = EvidenceWriter(work_dir)
        self.records: dict[str, Any] = {}

    def record(self, cell_id: str) -> Any:
        """The cell's record (bench.record.CellRecord), running its group's selected cells if not done yet."""
        if cell_id not in self.records:
            from bench.runner import run_group
            from bench.shards import group_key

            key = group_key(self.cells[cell_id])
            group = [
                c
                for c in self.cells.values()
                if group_key(c) == key
                and (c.cell_id in self.selected or c.cell_id == cell_id)
                and c.cell_id not in self.records
            ]
            bar = types.SimpleNamespace(set_postfix_str=lambda *a, **k: None)
            for record in run_group(
                group, self.pipeline, self.suite, self.device, self.evidence, self.suite.limits.cell_timeout_s, bar
            ):
                self.records[record.cell_id] = record
        return self.records[cell_id]

    def predictor(self, cell_id: str) -> tuple[Any, Any]:
        """The cell's deployed predictor and a batch of eval inputs at the suite's first batch size (the stages are
        memoised by the pipeline: nothing runs again)."""
        from bench.runner import prepare_stages

        stages = prepare_stages(self.cells[cell_id], self.pipeline)
        x = stages.data.value.x_eval
        batch = self.suite.measurement.batch_sizes[0]
        if len(x) < batch:
            x = x.repeat(math.ceil(batch / len(x)), *([1] * (x.dim() - 1)))
        return stages.exported.value, x[:batch].contiguous()


@pytest.fixture(scope="session")
def bench_cell_runner(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CellRunner:
    """The runner of the `--benchmark` suite's cells, shared by the session's cell items."""
    suite_file = request.config.stash[_SUITE_KEY]
    selected = {
        item.callspec.params[CELL_ARG]
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.getparent(SuiteFile) is suite_file
    }
    from bench.errors import BenchInputError

    try:
        return CellRunner(
            suite_file.suite, suite_file.cells, selected, cache_path(request.config), tmp_path_factory.mktemp("bench")
        )
    except BenchInputError as exc:
        pytest.fail(f"bench: {exc}", pytrace=False)


def _extra_info(record: Any, environment: dict[str, Any]) -> dict[str, Any]:
    data = record.to_json()
    keys = (
        "clean_accuracy",
        "robust_accuracy",
        "threat_model",
        "n_eval",
        "model_size_bytes",
        "peak_memory_mb",
        "model_memory_mb",
        "params",
        "macs",
        "throughput_sps",
        "latency_ms",
        "gates",
    )
    return {"cell_id": record.cell_id, **{k: data.get(k) for k in keys}, "environment": environment}


def _g(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def gate_failures(record: Any, verdict: str = "fail") -> list[str]:
    """One readable line per gate with this verdict ("fail" or "inconclusive"): the cell, the limit, the value."""
    word = "failed" if verdict == "fail" else verdict
    return [
        f"{record.cell_id}: gate {name} {word}: value {_g(gate.value)}, limit {_g(gate.limit)} ({gate.source}): "
        f"{gate.detail}"
        for name, gate in (record.gates or {}).items()
        if gate.verdict == verdict
    ]


class BenchGateWarning(UserWarning):
    """A suite gate that could not tell (too few samples): the item passes, with this warning."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A skipped cell is reported at its suite file (`SKIPPED [n] suite.yaml: reason`), not at this module."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple) and isinstance(item.parent, SuiteFile):
        report.longrepr = (str(item.path), None, report.longrepr[2])


def test_cell(benchmark: Any, bench_cell_runner: CellRunner, bench_cell_id: str) -> None:
    """One cell of the suite: its stages (cached), its deployed predictor timed by pytest-benchmark, its gates."""
    runner = bench_cell_runner
    record = runner.record(bench_cell_id)
    if record.status == "skipped":
        pytest.skip(record.reason or "skipped")
    if record.status != "ok":
        pytest.fail(f"{bench_cell_id}: failed: {record.cause}\n\n{record.error or ''}", pytrace=False)
    predictor, x = runner.predictor(bench_cell_id)
    benchmark.group = runner.suite.name
    benchmark.extra_info.update(_extra_info(record, runner.environment))
    benchmark.extra_info["batch_size"] = len(x)

    import torch

    with torch.inference_mode():
        benchmark(predictor, x)
    for line in gate_failures(record, "inconclusive"):
        warnings.warn(BenchGateWarning(line), stacklevel=1)
    failures = gate_failures(record)
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
