"""bench: a benchmark harness for compressed models.

A YAML suite becomes the product model x recipe x compression x runtime x attack; every cell is measured for
clean and robust accuracy, latency, memory and size, and written to a run directory and an HTML report.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_run"]


def load_run(run_dir):
    """Open a run directory: `.cells` (DataFrame), `.model(id)`, `.artifact(id)`, `.eval_data(id)`."""
    from bench.results import load_run as _load_run

    return _load_run(run_dir)
