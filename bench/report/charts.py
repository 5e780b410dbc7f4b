"""The report's Plotly charts: one function per chart, each returning a figure or None when it has no data.

Every function takes `points`: (run tag, cell) pairs of ok cells, where the tag is "" for a single run and the
run's name when several runs share the report, so that their points stay apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative

from bench.record import CellRecord
from bench.report.data import cell_id, config_key, cost, label, num, p50

Point = tuple[str, CellRecord]

SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon", "pentagon")
LAYOUT = dict(template="plotly_white", height=440, margin=dict(l=60, r=20, t=50, b=60), legend=dict(font_size=11))


def _log_axis(traces: list[go.Scatter], axis: str, title: str) -> dict[str, Any]:
    """A log axis with explicit 1-2-5 ticks: over less than a decade plotly's own labels read "0.1 2 3 ... 9"."""
    values = [v for t in traces for v in getattr(t, axis) if v and v > 0]
    lo, hi = min(values), max(values)
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    ticks = [m * 10.0**e for e in decades for m in (1, 2, 5)]
    ticks = [t for t in ticks if lo / 2.5 <= t <= hi * 2.5]
    return dict(type="log", title=title, tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])


def _tagged(tag: str, text: str) -> str:
    return f"{tag}: {text}" if tag else text


def _styles(points: list[Point]) -> tuple[dict[str, str], dict[str, str]]:
    """Color per compression and symbol per runtime, stable across all charts of one report."""
    compressions = sorted({label(c, "compression") for _, c in points})
    runtimes = sorted({label(c, "runtime") for _, c in points})
    palette = qualitative.Plotly
    colors = {name: palette[i % len(palette)] for i, name in enumerate(compressions)}
    symbols = {name: SYMBOLS[i % len(SYMBOLS)] for i, name in enumerate(runtimes)}
    return colors, symbols


def _scatter(
    points: list[Point],
    x_of: Callable[[CellRecord], float | None],
    y_of: Callable[[CellRecord], float | None],
    suffix: str = "",
    hover: str = "",
) -> list[go.Scatter]:
    """One trace per (compression, runtime) of the points where both x and y are known."""
    colors, symbols = _styles(points)
    groups: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for tag, cell in points:
        x, y = x_of(cell), y_of(cell)
        if x is not None and y is not None:
            key = (label(cell, "compression"), label(cell, "runtime"))
            groups.setdefault(key, []).append((x, y, _tagged(tag, cell_id(cell))))
    traces = []
    for (compression, runtime), rows in sorted(groups.items()):
        xs, ys, texts = zip(*rows, strict=True)
        symbol = symbols[runtime] + ("-open" if suffix else "")
        traces.append(
            go.Scatter(
                x=xs,
                y=ys,
                text=texts,
                mode="markers",
                name=f"{compression} · {runtime}{suffix}",
                legendgroup=f"{compression} · {runtime}",
                marker=dict(color=colors[compression], symbol=symbol, size=10, line=dict(width=1.5)),
                hovertemplate="%{text}" + hover + "<extra></extra>",
            )
        )
    return traces


def _clean(cell: CellRecord) -> float | None:
    return num(cell.clean_accuracy)


def _robust(cell: CellRecord) -> float | None:
    return num(cell.robust_accuracy)


def _p50_b1(cell: CellRecord) -> float | None:
    return p50(cell, 1)[0]


def _size_mb(cell: CellRecord) -> float | None:
    size = num(cell.model_size_bytes)
    return None if size is None else size / 1e6


def _build_s(cell: CellRecord) -> float | None:
    return cost(cell, "train_s", "compress_s")


def accuracy_bars(points: list[Point]) -> go.Figure | None:
    """Clean accuracy and each attack's robust accuracy, grouped per model/recipe/compression/runtime."""
    # Cells that differ only by attack share one clean accuracy, so the first one known stands for the group.
    clean: dict[str, float] = {}
    robust: dict[str, dict[str, float]] = {}
    for tag, cell in points:
        group = _tagged(tag, config_key(cell)).replace("/", "<br>")
        if (value := _clean(cell)) is not None:
            clean.setdefault(group, value)
        if (value := _robust(cell)) is not None:
            robust.setdefault(label(cell, "attack"), {})[group] = value
    if not clean and not robust:
        return None
    groups = list(dict.fromkeys([*clean, *(g for by_group in robust.values() for g in by_group)]))
    fig = go.Figure(layout=LAYOUT)
    template = "%{x}<br>%{y:.1%}<extra>%{fullData.name}</extra>"
    fig.add_bar(x=groups, y=[clean.get(g) for g in groups], name="clean", hovertemplate=template)
    for attack, by_group in sorted(robust.items()):
        fig.add_bar(x=groups, y=[by_group.get(g) for g in groups], name=f"robust: {attack}", hovertemplate=template)
    fig.update_layout(barmode="group", title="Clean vs robust accuracy", yaxis=dict(tickformat=".0%", range=[0, 1]))
    return fig


def accuracy_latency(points: list[Point]) -> go.Figure | None:
    """Accuracy against p50 latency at batch 1: the compression/runtime trade-off at a glance."""
    hover = "<br>p50 %{x:.3g} ms<br>accuracy %{y:.1%}"
    traces = _scatter(points, _p50_b1, _clean, hover=hover)
    traces += _scatter(points, _p50_b1, _robust, suffix=" (robust)", hover=hover)
    if not traces:
        return None
    fig = go.Figure(traces, layout=LAYOUT)
    fig.update_layout(
        title="Accuracy vs latency (filled: clean, open: robust)",
        xaxis=_log_axis(traces, "x", "p50 latency at batch 1 (ms)"),
        yaxis=dict(tickformat=".0%", title="accuracy"),
    )
    return fig


def size_accuracy(points: list[Point]) -> go.Figure | None:
    """Clean accuracy against model size on disk."""
    hover = "<br>%{x:.3g} MB<br>clean %{y:.1%}"
    traces = _scatter(points, _size_mb, _clean, hover=hover)
    if not traces:
        return None
    fig = go.Figure(traces, layout=LAYOUT)
    fig.update_layout(
        title="Model size vs clean accuracy",
        xaxis=_log_axis(traces, "x", "model size (MB)"),
        yaxis=dict(tickformat=".0%", title="clean accuracy"),
    )
    return fig


def cost_latency(points: list[Point]) -> go.Figure | None:
    """Training + compression time against inference latency: what the build costs versus what it buys."""
    hover = "<br>train+compress %{x:.3g} s<br>p50 %{y:.3g} ms"
    traces = _scatter(points, _build_s, _p50_b1, hover=hover)
    if not traces:
        return None
    fig = go.Figure(traces, layout=LAYOUT)
    fig.update_layout(
        title="Training + compression time vs inference latency",
        xaxis=dict(title="train + compress time (s)"),
        yaxis=_log_axis(traces, "y", "p50 latency at batch 1 (ms)"),
    )
    return fig


def eps_curves(points: list[Point]) -> go.Figure | None:
    """Robust accuracy against eps, one line per (artifact, attack with its other parameters): the eps sweep."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for tag, cell in points:
        attack = cell.attack or {}
        eps, robust = num(attack.get("eps")), _robust(cell)
        if eps is None or robust is None:
            continue
        rest = ", ".join(f"{k}={v}" for k, v in attack.items() if k not in ("name", "eps", "alpha"))
        name = _tagged(tag, f"{config_key(cell)} · {attack.get('name')}" + (f" ({rest})" if rest else ""))
        curves.setdefault(name, []).append((eps, robust))
    curves = {name: sorted(pts) for name, pts in curves.items() if len({e for e, _ in pts}) > 1}
    if not curves:
        return None
    fig = go.Figure(layout=LAYOUT)
    for name, pts in sorted(curves.items()):
        fig.add_scatter(
            x=[e for e, _ in pts],
            y=[r for _, r in pts],
            mode="lines+markers",
            name=name,
            hovertemplate="eps %{x:.4g}<br>robust %{y:.1%}<extra>%{fullData.name}</extra>",
        )
    fig.update_layout(
        title="Robust accuracy vs eps (it must not rise with eps)",
        xaxis=dict(title="eps (pixel space)"),
        yaxis=dict(tickformat=".0%", range=[0, 1]),
    )
    return fig
