"""A self-contained HTML report of one or more run directories.

The page must open offline from file://, so plotly.js is inlined once and every chart is inline Plotly JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from bench.report import charts, tables
from bench.report.data import Run, load_run, ok_cells

__all__ = ["render_report"]

# (id, chart function, note shown when the chart has no data), in the order they appear.
CHARTS = [
    ("accuracy", charts.accuracy_bars, "no ok cell has a clean or robust accuracy"),
    ("accuracy-latency", charts.accuracy_latency, "no ok cell has both an accuracy and a batch-1 latency"),
    ("size-accuracy", charts.size_accuracy, "no ok cell has both a model size and a clean accuracy"),
    ("cost-latency", charts.cost_latency, "no ok cell has both training/compression costs and a batch-1 latency"),
    ("eps-curves", charts.eps_curves, "no attack was run at more than one eps"),
]


def _script_json(text: str) -> Markup:
    # "<" only occurs inside JSON strings, where \u003c means the same; this keeps "</script>" in a cell id
    # or an error from closing the inline script early.
    return Markup(text.replace("<", "\\u003c"))


def _tags(runs: list[Run]) -> list[str]:
    """The name that tells runs apart in tables and charts ("" for a single run, which needs none)."""
    if len(runs) == 1:
        return [""]
    names = [run.name for run in runs]
    if len(set(names)) < len(names):
        names = [f"{run.name} ({run.path.name})" for run in runs]
    if len(set(names)) < len(names):
        names = [f"{i + 1}. {run.name}" for i, run in enumerate(runs)]
    return names


def _charts(runs: list[Run], tags: list[str]) -> list[dict[str, Any]]:
    tag_of = {id(run): tag for run, tag in zip(runs, tags, strict=True)}
    points = [(tag_of[id(run)], cell) for run, cell in ok_cells(runs)]
    result = []
    for chart_id, build, note in CHARTS:
        fig = build(points) if points else None
        data = None if fig is None else _script_json(fig.to_json())
        result.append({"id": f"chart-{chart_id}", "json": data, "note": note})
    return result


def render_report(
    run_dirs: list[Path], out_path: Path, *, plotly_src: str | None = None, baseline: Path | None = None
) -> Path:
    """Write one HTML report of `run_dirs` (compared against `baseline` if given) to `out_path`.

    `plotly_src` None inlines plotly.js once (the page is self-contained and opens offline); a string makes the
    page load it with `<script src="{plotly_src}">` instead (a site of many reports shares one copy).
    """
    runs = [load_run(Path(d)) for d in run_dirs]
    tags = _tags(runs)
    headers, rows = tables.matrix(runs, tags)
    comparison = None
    if baseline is not None:
        base = load_run(Path(baseline))
        comp_headers, comp_rows = tables.comparison(base, runs, tags)
        comparison = {"name": base.name, "path": str(base.path), "headers": comp_headers, "rows": comp_rows}

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=jinja2.StrictUndefined
    )
    html = env.get_template("template.html.j2").render(
        title=" vs ".join(run.name for run in runs) or "no runs",
        statuses=[tables.status_row(run) for run in runs],
        env_names=[tag or run.name for run, tag in zip(runs, tags, strict=True)],
        env_rows=tables.environment(runs),
        headers=headers,
        rows=rows,
        charts=_charts(runs, tags),
        any_ok=bool(ok_cells(runs)),
        checks=tables.failed_checks(runs, tags),
        invariants=tables.run_invariants(runs, tags),
        multi_run=len(runs) > 1,
        comparison=comparison,
        plotly_js=Markup(get_plotlyjs()) if plotly_src is None else None,
        plotly_src=plotly_src,
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
