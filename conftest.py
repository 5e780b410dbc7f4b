"""pytest integration: `pytest --benchmark` runs the timing benchmarks (pytest-benchmark under the hood).

Without `--benchmark`, tests marked `benchmark` are skipped so the default test run stays fast and free of
timing assertions; tests marked `gpu` are skipped when no CUDA device is present.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmarks (tests marked 'benchmark') with pytest-benchmark",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_benchmarks = config.getoption("--benchmark")
    skip_bench = pytest.mark.skip(reason="benchmark: run with `pytest --benchmark`")
    cuda = None
    for item in items:
        markers = {m.name for m in item.iter_markers()}
        if "benchmark" in markers and not run_benchmarks:
            item.add_marker(skip_bench)
        if "gpu" in markers:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
