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
from bench.report.data import config_key, label, num

Point = tuple[str, CellRecord]

MAX_CURVES = 60  # eps-sweep lines beyond which the chart is a tangle (and megabytes)
MAX_BAR_GROUPS = 60  # beyond this a bar per variant is unreadable (the variant table has them all)
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon", "pentagon")
# An accuracy axis on the right of a loss axis: 0-100% in steps of 20%, not ticks matched to the loss axis's
# gridlines (which read 6%, 19%, 31%, ...).
PCT_RIGHT_AXIS = dict(tickformat=".0%", range=[0, 1], tickmode="linear", tick0=0, dtick=0.2, showgrid=False)
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


def _clean(cell: CellRecord) -> float | None:
    return num(cell.clean_accuracy)


def _robust(cell: CellRecord) -> float | None:
    return num(cell.robust_accuracy)


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
    groups = list(dict.fromkeys([*clean, *(g for by_group in robust.values() for g in by_group)]))
    if not groups or len(groups) > MAX_BAR_GROUPS:
        return None
    fig = go.Figure(layout=LAYOUT)
    template = "%{x}<br>%{y:.1%}<extra>%{fullData.name}</extra>"
    fig.add_bar(x=groups, y=[clean.get(g) for g in groups], name="clean", hovertemplate=template)
    for attack, by_group in sorted(robust.items()):
        fig.add_bar(x=groups, y=[by_group.get(g) for g in groups], name=f"robust: {attack}", hovertemplate=template)
    fig.update_layout(barmode="group", title="Clean vs robust accuracy", yaxis=dict(tickformat=".0%", range=[0, 1]))
    return fig


def cost_latency(all_variants: list[Any]) -> go.Figure | None:
    """Training + compression time against inference latency: what the build costs versus what it buys."""
    hover = "<br>train+compress %{x:.3g} s<br>p50 %{y:.3g} ms"
    traces, _ = _variant_scatter(all_variants, lambda v: v.build_s, lambda v: v.p50_b1, hover)
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
    if not curves or len(curves) > MAX_CURVES:
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


# -- views over variants (bench.report.views): one point per model x recipe x compression x runtime -------------


def _round(value: float) -> float:
    """4 significant digits: more than a chart shows, and a 10,000-cell report stays small."""
    return float(f"{value:.4g}")


def pct_axis(values: list[float], title: str) -> dict[str, Any]:
    """A fraction axis shown in percent whose tick labels never repeat: a 1-2-5 step of about five ticks over the
    data's range, and as many decimals as that step needs (plotly's ".0%" over 96.2..97.4% read "96% 97% 97%")."""
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 0.01:  # one value, or all within a point: show a point around them rather than 0.001% steps
        mid = (lo + hi) / 2
        lo, hi = mid - 0.005, mid + 0.005
    span = hi - lo
    raw = span / 5
    exponent = math.floor(math.log10(raw))
    step = min((m * 10.0**exponent for m in (1, 2, 5, 10) if m * 10.0**exponent >= raw), default=raw)
    decimals = max(0, -math.floor(math.log10(step * 100) + 1e-9))
    pad = step / 2
    low, high = max(lo - pad, 0.0) if lo >= 0 else lo - pad, min(hi + pad, 1.0) if hi <= 1 else hi + pad
    tick0 = math.floor(low / step) * step
    return dict(title=title, tickformat=f".{decimals}%", tickmode="linear", tick0=tick0, dtick=step, range=[low, high])


def tick_labels(axis: dict[str, Any]) -> list[str]:
    """The labels a `pct_axis` shows (for tests and for the docs): every tick inside its range, formatted."""
    step, low, high = axis["dtick"], *axis["range"]
    decimals = int(axis["tickformat"][1:-1])
    first = math.ceil((low - 1e-12) / step)
    ticks = [k * step for k in range(first, math.floor((high + 1e-12) / step) + 1)]
    return [f"{t * 100:.{decimals}f}%" for t in ticks]


def _frontier_traces(front: list[tuple[float, float]], name: str, color: str) -> go.Scatter:
    xs, ys = zip(*front, strict=True)
    return go.Scatter(
        x=xs,
        y=ys,
        mode="lines",
        line=dict(color=color, dash="dot", shape="hv", width=1.5),
        name=f"Pareto front: {name}",
        hoverinfo="skip",
    )


def _variant_scatter(
    all_variants: list[Any], x_of: Callable[[Any], float | None], y_of: Callable[[Any], float | None], hover: str
) -> tuple[list[go.Scatter], list[go.Scatter]]:
    """Points per (compression, runtime) and a Pareto front (lower x, higher y) per run and model."""
    from bench.report.views import pareto

    colors = {name: qualitative.Plotly[i % 10] for i, name in enumerate(sorted({v.compression for v in all_variants}))}
    symbols = {name: SYMBOLS[i % len(SYMBOLS)] for i, name in enumerate(sorted({v.runtime for v in all_variants}))}
    groups: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    per_model: dict[str, list[tuple[float, float, Any]]] = {}
    for v in all_variants:
        x, y = x_of(v), y_of(v)
        if x is None or y is None:
            continue
        x, y = _round(x), _round(y)
        groups.setdefault((v.compression, v.runtime), []).append((x, y, v.name))
        model = f"{v.tag}: {v.model}" if v.tag else v.model
        per_model.setdefault(model, []).append((x, y, v))
    points = []
    for (compression, runtime), rows in sorted(groups.items()):
        xs, ys, texts = zip(*rows, strict=True)
        points.append(
            go.Scatter(
                x=xs,
                y=ys,
                text=texts,
                mode="markers",
                name=f"{compression} · {runtime}",
                marker=dict(color=colors[compression], symbol=symbols[runtime], size=10, line=dict(width=1)),
                hovertemplate="%{text}" + hover + "<extra></extra>",
            )
        )
    line_colors = qualitative.Dark24
    fronts = []
    for i, (model, pts) in enumerate(sorted(per_model.items())):
        front = [(x, y) for x, y, _ in pareto(pts)]
        fronts.append(_frontier_traces(front, model, line_colors[i % len(line_colors)]))
    return points, fronts


def robust_latency(all_variants: list[Any]) -> go.Figure | None:
    """Worst-case robust accuracy (clean where no attack ran) against p50 at batch 1, with each model's Pareto
    front: the variants nothing else beats on both."""
    metric = "robust" if any(v.robust is not None for v in all_variants) else "clean"
    points, fronts = _variant_scatter(
        all_variants, lambda v: v.p50_b1, lambda v: getattr(v, metric), f"<br>p50 %{{x:.3g}} ms<br>{metric} %{{y:.1%}}"
    )
    if not points:
        return None
    fig = go.Figure([*points, *fronts], layout=LAYOUT)
    ys = [y for t in points for y in t.y]
    what = "worst-case robust accuracy" if metric == "robust" else "clean accuracy"
    fig.update_layout(
        title=f"{what.capitalize()} vs latency, Pareto front per model",
        xaxis=_log_axis(points, "x", "p50 latency at batch 1 (ms)"),
        yaxis=pct_axis(ys, what),
    )
    return fig


def variant_size_accuracy(all_variants: list[Any]) -> go.Figure | None:
    """Clean accuracy against model size, with each model's Pareto front (smaller and more accurate)."""
    points, fronts = _variant_scatter(
        all_variants,
        lambda v: None if v.size is None else v.size / 1e6,
        lambda v: v.clean,
        "<br>%{x:.3g} MB<br>clean %{y:.1%}",
    )
    if not points:
        return None
    fig = go.Figure([*points, *fronts], layout=LAYOUT)
    fig.update_layout(
        title="Model size vs clean accuracy, Pareto front per model",
        xaxis=_log_axis(points, "x", "model size on disk (MB)"),
        yaxis=pct_axis([y for t in points for y in t.y], "clean accuracy"),
    )
    return fig


def speedup_heatmap(all_variants: list[Any]) -> go.Figure | None:
    """Speed-up at batch 1 against the uncompressed eager model, compression x runtime, one heatmap per model
    (a menu picks the model)."""
    from bench.report.views import EAGER, baseline_of, ratio

    index = {v.key: v for v in all_variants}
    models: dict[str, dict[tuple[str, str], float]] = {}
    for v in all_variants:
        eager = baseline_of(v, index, EAGER)
        value = ratio(eager.p50_b1 if eager else None, v.p50_b1)
        if value is not None:
            name = " · ".join(p for p in (v.tag, v.model) if p)
            models.setdefault(name, {})[(f"{v.recipe} · {v.compression}", v.runtime)] = value
    if not models:
        return None
    fig = go.Figure(layout=LAYOUT)
    names = sorted(models)
    for i, name in enumerate(names):
        grid = models[name]
        rows = sorted({r for r, _ in grid})
        cols = sorted({c for _, c in grid})
        z = [[grid.get((r, c)) for c in cols] for r in rows]
        fig.add_heatmap(
            z=z,
            x=cols,
            y=rows,
            visible=i == 0,
            name=name,
            colorscale="RdYlGn",
            zmid=1.0,
            texttemplate="%{z:.2f}x",
            hovertemplate="%{y} on %{x}: %{z:.2f}x<extra>" + name + "</extra>",
            colorbar=dict(title="speed-up"),
        )
    buttons = [
        dict(label=name, method="update", args=[{"visible": [j == i for j in range(len(names))]}])
        for i, name in enumerate(names)
    ]
    fig.update_layout(
        title="Speed-up at batch 1 vs the uncompressed eager model (>1 is faster)",
        xaxis=dict(title="runtime", type="category"),
        yaxis=dict(title="recipe · compression", type="category"),
        updatemenus=[dict(buttons=buttons, x=1.0, y=1.15, xanchor="right")] if len(names) > 1 else [],
    )
    return fig


def breakeven_chart(rows: list[Any]) -> go.Figure | None:
    """Inferences at batch 1 after which a variant's extra build cost is repaid by its faster inference."""
    paying = sorted((b for b in rows if b.inferences is not None), key=lambda b: b.inferences)
    if not paying:
        return None
    names = [b.variant.name for b in paying]
    fig = go.Figure(layout=LAYOUT)
    fig.add_bar(
        x=[max(b.inferences, 1) for b in paying],
        y=names,
        orientation="h",
        customdata=[[b.extra_s, b.saving_ms, b.inferences] for b in paying],
        hovertemplate="%{y}<br>extra build %{customdata[0]:.3g} s<br>saves %{customdata[1]:.3g} ms per inference"
        "<br>pays for itself after %{customdata[2]:,} inferences<extra></extra>",
        name="break-even",
    )
    never = len(rows) - len(paying)
    note = f" ({never} never pay off: not faster)" if never else ""
    fig.update_layout(
        title="Break-even: inferences at batch 1 until the build cost is repaid" + note,
        xaxis=dict(type="log", title="inferences (log)"),
        yaxis=dict(type="category", automargin=True),
        height=max(300, 40 + 22 * len(names)),
    )
    return fig


def training_history(all_variants: list[Any]) -> go.Figure | None:
    """Loss (and training accuracy, right axis) per epoch of every trained model, once per training."""
    seen: dict[str, list[dict[str, Any]]] = {}
    for v in all_variants:
        history = v.first(lambda c: c.training.history if c.training is not None and c.training.history else None)
        name = " · ".join(p for p in (v.tag, v.model, v.recipe) if p)
        if history and name not in seen:
            seen[name] = [h for h in history if isinstance(h, dict)]
    if not seen:
        return None
    fig = go.Figure(layout=LAYOUT)
    for i, (name, history) in enumerate(sorted(seen.items())):
        color = qualitative.Plotly[i % 10]
        epochs = [h.get("epoch") for h in history]
        fig.add_scatter(x=epochs, y=[h.get("loss") for h in history], name=f"{name}: loss", line=dict(color=color))
        if any(h.get("train_accuracy") is not None for h in history):
            fig.add_scatter(
                x=epochs,
                y=[h.get("train_accuracy") for h in history],
                name=f"{name}: train accuracy",
                yaxis="y2",
                line=dict(color=color, dash="dash"),
                hovertemplate="epoch %{x}<br>%{y:.1%}<extra>%{fullData.name}</extra>",
            )
    fig.update_layout(
        title="Training: loss (solid) and training accuracy (dashed) per epoch",
        xaxis=dict(title="epoch", dtick=1),
        yaxis=dict(title="mean training loss"),
        yaxis2=dict(title="training accuracy", overlaying="y", side="right", **PCT_RIGHT_AXIS),
    )
    return fig


def _per_round(extra: dict[str, Any], key: str) -> list[list[float]]:
    """[client][round] bytes: `round_<key>` ([round][client]) as recorded, else the per-client total spread evenly
    over the rounds (records from before the per-round figures)."""
    rounds = extra.get(f"round_{key}")
    if isinstance(rounds, list) and rounds and all(isinstance(r, list) for r in rounds):
        return [list(column) for column in zip(*rounds, strict=False)]
    n = max(int(extra.get("rounds") or 1), 1)
    return [[b / n] * n for b in extra.get(key) or []]


def _human_bytes(value: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def federated(all_variants: list[Any]) -> go.Figure | None:
    """Federated recipes: bytes each client sent and received per round, and per round the loss and the global
    model's accuracy on the calibration split."""
    from plotly.subplots import make_subplots

    seen: dict[str, dict[str, Any]] = {}
    for v in all_variants:
        extra = v.first(lambda c: c.training.recipe_extra if c.training is not None else None) or {}
        if "bytes_sent" in extra and "rounds" in extra:
            seen.setdefault(" · ".join(p for p in (v.tag, v.model, v.recipe) if p), extra)
    if not seen:
        return None
    fig = make_subplots(
        rows=1,
        cols=2,
        specs=[[{}, {"secondary_y": True}]],
        subplot_titles=("bytes per client and round", "per round: loss (solid), accuracy (dashed)"),
    )
    accuracy_axis = False
    for i, (name, extra) in enumerate(sorted(seen.items())):
        color = qualitative.Plotly[i % 10]
        for key, shade in (("bytes_sent", 1.0), ("bytes_received", 0.5)):
            per_client = _per_round(extra, key)
            clients = [f"client {k}" for k in range(len(per_client))]
            rounds_text = [
                ", ".join(f"r{r + 1} {_human_bytes(b)}" for r, b in enumerate(values[:10]))
                + (f", … {len(values) - 10} more" if len(values) > 10 else "")
                for values in per_client
            ]
            fig.add_bar(
                x=clients,
                y=[sum(values) / len(values) if values else None for values in per_client],
                customdata=rounds_text,
                hovertemplate="%{x}: %{y:.3s}B a round<br>%{customdata}<extra>%{fullData.name}</extra>",
                name=f"{name}: {key.split('_')[1]}",
                marker_color=color,
                opacity=shade,
                row=1,
                col=1,
            )
        losses = extra.get("round_loss") or []
        rounds = list(range(1, len(losses) + 1))
        fig.add_scatter(x=rounds, y=losses, name=f"{name}: loss", line=dict(color=color), row=1, col=2)
        for key, what, dash in (("round_accuracy", "accuracy", "dash"), ("round_robust_accuracy", "robust", "dot")):
            accuracy = extra.get(key) or []
            if not any(a is not None for a in accuracy):
                continue
            accuracy_axis = True
            kept = extra.get("kept_round") if extra.get("keep") == "best" else None
            fig.add_scatter(
                x=list(range(1, len(accuracy) + 1)),
                y=accuracy,
                name=f"{name}: {what}" + (f" (round {kept} kept)" if kept else ""),
                line=dict(color=color, dash=dash),
                hovertemplate="round %{x}<br>%{y:.1%}<extra>%{fullData.name}</extra>",
                row=1,
                col=2,
                secondary_y=True,
            )
    fig.update_layout(**LAYOUT)
    fig.update_layout(
        title="Federated training: communication, loss and accuracy per round",
        barmode="group",
        margin=dict(LAYOUT["margin"], t=90),  # room for the subplot titles under the title
    )
    fig.update_yaxes(title_text="bytes per round", row=1, col=1)
    fig.update_yaxes(title_text="mean local loss", row=1, col=2, secondary_y=False)
    if accuracy_axis:
        fig.update_yaxes(title_text="global model accuracy (calibration split)", row=1, col=2, secondary_y=True)
        fig.update_yaxes(**PCT_RIGHT_AXIS, row=1, col=2, secondary_y=True)
    fig.update_xaxes(title_text="round", dtick=1, row=1, col=2)
    return fig
