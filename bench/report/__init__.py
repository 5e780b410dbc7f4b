"""A self-contained HTML report of one or more run directories.

The page must open offline from file://, so plotly.js is inlined once (inert until a chart is drawn) and every chart
is inline Plotly JSON, drawn when it scrolls into view.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from bench.report import charts, grids, question, tables, views
from bench.report.data import Run, load_run, ok_cells

__all__ = ["render_report"]

# (id, chart function, what it is drawn from, note shown when the chart has no data), in the order they appear.
CHARTS = [
    ("robust-latency", charts.robust_latency, "variants", "no variant has both an accuracy and a batch-1 latency"),
    ("size-accuracy", charts.variant_size_accuracy, "variants", "no variant has both a size and a clean accuracy"),
    ("speedup", charts.speedup_heatmap, "variants", "no variant has a batch-1 latency and an uncompressed eager twin"),
    ("breakeven", charts.breakeven_chart, "breakevens", "no compressed variant is faster than its uncompressed twin"),
    ("accuracy", charts.accuracy_bars, "points", "no ok cell has an accuracy, or too many variants for bars"),
    ("cost-latency", charts.cost_latency, "variants", "no variant has both training/compression costs and a latency"),
    ("eps-curves", charts.eps_curves, "points", "no attack was run at more than one eps, or too many curves to draw"),
    ("training", charts.training_history, "variants", "no training recorded a per-epoch history"),
    ("federated", charts.federated, "variants", "no federated recipe"),
]
# Charts that are left out without a note when they have no data (most runs have no federated recipe).
QUIET = {"chart-federated"}


def _script_json(text: str) -> Markup:
    # "<" only occurs inside JSON strings, where \u003c means the same; this keeps "</script>" in a cell id
    # or an error from closing the inline script early.
    # plotly writes "/" as \u002f for the same reason: with "<" escaped that is six bytes a slash for nothing.
    return Markup(text.replace("<", "\\u003c").replace("\\u002f", "/"))


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


def _charts(sources: dict[str, list[Any]]) -> list[dict[str, Any]]:
    result = []
    for chart_id, build, source, note in CHARTS:
        data = sources[source]
        fig = build(data) if data else None
        if fig is None and f"chart-{chart_id}" in QUIET:
            continue
        text = None if fig is None else _script_json(fig.to_json())
        result.append({"id": f"chart-{chart_id}", "json": text, "note": note})
    return result


def _grid_json(grid: dict[str, Any]) -> Markup:
    return _script_json(json.dumps(grid, separators=(",", ":"), allow_nan=False))


def render_report(
    run_dirs: list[Path], out_path: Path, *, plotly_src: str | None = None, baseline: Path | None = None
) -> Path:
    """Write one HTML report of `run_dirs` (compared against `baseline` if given) to `out_path`.

    `plotly_src` None inlines plotly.js once (the page is self-contained and opens offline); a string makes the
    page load it with `<script src="{plotly_src}">` instead (a site of many reports shares one copy).
    """
    runs = [load_run(Path(d)) for d in run_dirs]
    tags = _tags(runs)
    comparison = None
    if baseline is not None:
        base = load_run(Path(baseline))
        comp_headers, comp_rows = tables.comparison(base, runs, tags)
        regressions = [r for r in comp_rows if r["status"] == "regression"]
        comparison = {"name": base.name, "path": str(base.path), "rows": comp_rows}
        comparison["grid"] = _grid_json(grids.comparison_grid(comp_headers, comp_rows))
        comparison["regressions"] = len(regressions)
    all_variants = views.variants(runs, tags)
    breakevens = views.break_evens(all_variants)
    checks = tables.failed_checks(runs, tags)
    problems = views.problems(runs, tags, all_variants, checks)
    ok_variants = [v for v in all_variants if v.ok]
    points = [(tag, cell) for run, tag in zip(runs, tags, strict=True) for cell in run.cells if cell.status == "ok"]
    multi = len(runs) > 1

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=jinja2.StrictUndefined
    )
    html = env.get_template("template.html.j2").render(
        title=" vs ".join(run.name for run in runs) or "no runs",
        statuses=[tables.status_row(run) for run in runs],
        env_names=[tag or run.name for run, tag in zip(runs, tags, strict=True)],
        env_rows=tables.environment(runs),
        headlines=views.headlines(all_variants),
        answers=question.answers(runs, tags, all_variants, breakevens),
        problems=problems,
        fmt=tables,
        n_cells=sum(len(run.cells) for run in runs),
        cell_grid=_grid_json(grids.cell_grid(runs, tags)),
        variant_grid=_grid_json(grids.variant_grid(all_variants, multi)),
        breakeven_grid=_grid_json(grids.breakeven_grid(breakevens, multi)) if breakevens else None,
        charts=_charts({"points": points, "variants": ok_variants, "breakevens": breakevens}),
        any_ok=bool(ok_cells(runs)),
        multi_run=multi,
        comparison=comparison,
        plotly_js=Markup(get_plotlyjs()) if plotly_src is None else None,
        plotly_src=plotly_src,
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
