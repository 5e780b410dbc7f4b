"""What this repository's own tests need from pytest.

`--benchmark` itself is defined by the installed package's pytest plugin (bench/pytest_plugin.py, entry point
`pytest11`): with it, the suite's cells run as pytest-benchmark benchmarks (docs/pytest.md), and this repository's
harness-vs-reference benchmarks (tests/test_benchmarks.py, marked `benchmark`) run beside them. Without it, tests
marked `benchmark` are skipped so the default test run stays fast and free of timing assertions; tests marked
`gpu` are skipped when no CUDA device is present.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_benchmarks = config.getoption("benchmark", default=False)  # the plugin's option
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
