"""The HTML report: self-contained, complete, and robust to partial or empty runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from bench.report import render_report
from tests.report_fixtures import plotly_source, report_figures, report_grid

MODELS = ("simple_cnn", "tiny_mlp")
COMPRESSIONS = ({"name": "prune", "ratio": 0.5}, {"name": "quantize", "bits": 8})
ATTACKS = ({"name": "pgd", "eps": 0.1, "alpha": 0.01, "steps": 10}, {"name": "fgsm", "eps": 0.05})
SKIP_REASON = "runtime tensorrt is not installed"
ERROR_LAST_LINE = "RuntimeError: export failed: unsupported operator aten::frobnicate"
TRACEBACK = (
    f'Traceback (most recent call last):\n  File "bench/export.py", line 12, in export\n    run()\n{ERROR_LAST_LINE}\n'
)


def _label(axis: dict[str, Any]) -> str:
    extra = {"ratio": "", "bits": "int", "eps": "eps"}
    return "-".join([axis["name"], *(f"{extra.get(k, k)}{v}" for k, v in axis.items() if k in extra)])


def _cell(model: str, compression: dict[str, Any], runtime: str, attack: dict[str, Any], i: int) -> dict[str, Any]:
    labels = {"model": model, "recipe": "standard", "compression": _label(compression), "runtime": runtime}
    labels["attack"] = _label(attack)
    clean = 0.95 - 0.03 * i
    return {
        "cell_id": "/".join(labels.values()),
        "model": {"name": model},
        "recipe": {"name": "standard", "epochs": 10},
        "compression": compression,
        "runtime": {"name": runtime},
        "attack": attack,
        "labels": labels,
        "status": "ok",
        "reason": None,
        "error": None,
        "clean_accuracy": clean,
        "robust_accuracy": clean * (0.4 if attack["name"] == "pgd" else 0.6),
        "threat_model": "transfer",
        "surrogate": "float eager twin",
        "n_eval": 300,
        "latency_ms": {
            "1": {"p50": 0.1 * (i + 1), "p90": 0.15, "p99": 0.2, "mean": 0.13, "std": 0.01, "n": 200},
            "64": {"p50": 1.5 + i, "p90": 1.7, "p99": 1.9, "mean": 1.55, "std": 0.1, "n": 50, "insufficient": ["p90"]},
        },
        "throughput_sps": 42000.0 / (i + 1),
        "peak_memory_mb": 300.0 + 10 * i,
        "model_size_bytes": 120_000 * (i + 1) if i % 2 else 2_500_000,
        "params": 30_000 * (i + 1),
        "macs": 400_000 * (i + 1),
        "costs": {"train_s": 1.0 + i, "compress_s": 0.4, "export_s": 0.8, "measure_s": 2.0, "attack_s": 0.1},
        "checks": {"eps_ball": {"ok": True, "detail": "max |delta| 0.1000 <= eps 0.1"}},
    }


def _ok_cells() -> list[dict[str, Any]]:
    cells = []
    for m, model in enumerate(MODELS):
        for c, compression in enumerate(COMPRESSIONS):
            runtime = "onnxruntime" if c else "torch"
            cells += [_cell(model, compression, runtime, attack, 4 * m + 2 * c + a) for a, attack in enumerate(ATTACKS)]
    cells[-1]["checks"]["robust_le_clean"] = {"ok": False, "detail": "robust 0.70 > clean 0.60"}
    return cells


def _write_run(path: Path, name: str, cells: list[dict[str, Any]], torn: bool = False) -> Path:
    path.mkdir(parents=True)
    env = {"python": "3.11.7", "torch": "2.14.1", "cpu": "AMD EPYC", "cpu_count": 2, "gpu": None, "git_dirty": False}
    counts = {s: sum(c["status"] == s for c in cells) for s in ("ok", "skipped", "failed")}
    meta = {"name": name, "suite_file": "suites/default.yaml", "status": "complete", "seed": 0}
    meta |= {"started_at": "2026-11-21T23:50:00+00:00", "finished_at": "2026-11-21T23:55:00+00:00"}
    meta |= {"suite": {"models": list(MODELS)}, "environment": env, "counts": counts}
    (path / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    text = "".join(json.dumps(c) + "\n" for c in cells)
    if torn:
        text += '{"cell_id": "torn/cell", "status": "ok", "clean_accu'  # a write killed mid-line
    (path / "cells.jsonl").write_text(text, encoding="utf-8")
    return path


def _full_cells() -> list[dict[str, Any]]:
    skipped = {"cell_id": "simple_cnn/standard/none/tensorrt/none", "status": "skipped", "reason": SKIP_REASON}
    failed = {"cell_id": "tiny_mlp/standard/none/onnxruntime/none", "status": "failed", "error": TRACEBACK}
    return [*_ok_cells(), skipped, failed]


def _new_plots(html: str) -> int:
    """The number of figures the page draws (each when it scrolls into view)."""
    return len(report_figures(html))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("report")
    run = _write_run(root / "run", "default", _full_cells(), torn=True)
    out = render_report([run], root / "out" / "nested" / "report.html")
    assert out.exists()
    return out.read_text(encoding="utf-8")


def test_self_contained(report: str) -> None:
    banner = re.search(r"plotly\.js v\d+\.\d+\.\d+", get_plotlyjs())
    assert banner is not None
    assert report.count(banner.group(0)) == 1
    assert "<script src=" not in report.lower() and plotly_source(report) is None
    assert "<link " not in report.lower()
    assert "<title>default — bench report</title>" in report


def test_every_cell_reason_and_error(report: str) -> None:
    for cell in _full_cells():
        assert cell["cell_id"] in report
    assert SKIP_REASON in report
    assert ERROR_LAST_LINE in report
    assert "torn/cell" not in report
    assert "robust_le_clean" in report and "robust 0.70 &gt; clean 0.60" in report


def test_charts_and_counts(report: str) -> None:
    assert _new_plots(report) == 4
    assert "8 ok" in report and "1 skipped" in report and "1 failed" in report
    assert "95.0%" in report  # clean accuracy of the first cell, as a percentage


def test_empty_run(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", "empty", [])
    html = render_report([run], tmp_path / "report.html").read_text(encoding="utf-8")
    assert "0 ok" in html and "0 skipped" in html and "0 failed" in html
    assert "No results yet" in html
    assert _new_plots(html) == 0


def test_partial_cells_do_not_crash(tmp_path: Path) -> None:
    cells = [
        {"cell_id": "a/b/c/d/e", "status": "ok"},
        {"cell_id": "a/b/c/d/f", "status": "ok", "clean_accuracy": None, "latency_ms": {"x": 1, "1": None}},
        {"cell_id": "a/b/c/d/g", "status": "ok", "clean_accuracy": "high", "costs": None, "checks": []},
    ]
    run = _write_run(tmp_path / "run", "partial", cells)
    (run / "run.json").unlink()  # a run killed before run.json was written
    html = render_report([run], tmp_path / "report.html").read_text(encoding="utf-8")
    assert all(c["cell_id"] in html for c in cells)
    assert _new_plots(html) == 0 and "Chart skipped" in html


def test_baseline_comparison(tmp_path: Path) -> None:
    cells = _full_cells()
    base_cells = json.loads(json.dumps(cells))
    base_cells[0]["clean_accuracy"] = 0.80
    base_cells[1]["clean_accuracy"] = 0.99  # the candidate's 0.92 is worse
    base = _write_run(tmp_path / "base", "baseline", base_cells)
    run = _write_run(tmp_path / "run", "candidate", cells)
    # bench compare's rows: absolute points, and a drop is a regression only where McNemar on the samples supports it
    from bench.evidence import Correctness, append_correctness

    n = 300
    for run_dir, correct in ((base, 297), (run, round(cells[1]["clean_accuracy"] * n))):
        flags = [i < correct for i in range(n)]
        append_correctness(run_dir, Correctness(cells[1]["cell_id"], "sha", np.array(flags), None))
    html = render_report([run], tmp_path / "report.html", baseline=base).read_text(encoding="utf-8")
    assert "Comparison with baseline baseline" in html
    # a grid like the cell table's (paged, sorted and filtered by the page's script): text as shown, raw sort values
    grid = report_grid(html, "comparison")
    labels = [c["label"] for c in grid["columns"]]
    assert labels[:2] == ["status", "cell"] and labels[-1] == "details"
    rows = {r[1]: dict(zip(labels, r, strict=True)) for r in grid["rows"]}
    assert set(rows) == {c["cell_id"] for c in cells}
    better, worse = rows[cells[0]["cell_id"]], rows[cells[1]["cell_id"]]
    assert better["clean acc"]["t"] == f"{(cells[0]['clean_accuracy'] - 0.80) * 100:+.1f} pts better"
    assert better["clean acc"]["c"] == "num better"
    assert worse["clean acc"]["t"] == "-7.0 pts p<0.001 regression" and worse["clean acc"]["c"] == "num worse"
    assert worse["clean acc"]["v"] == pytest.approx(-7.0, abs=0.05)
    assert worse["status"]["t"] == "regression" and worse["status"]["c"] == "status failed"
    # regressions first, and their rows marked
    assert grid["rows"][0][1] == cells[1]["cell_id"] and grid["classes"][0] == "failed"
    assert grid["classes"].count("failed") == 1


def test_several_runs_get_a_run_column(tmp_path: Path) -> None:
    first = _write_run(tmp_path / "a", "first", _ok_cells()[:2])
    second = _write_run(tmp_path / "b", "second", _ok_cells()[2:4])
    html = render_report([first, second], tmp_path / "report.html").read_text(encoding="utf-8")
    assert '{"label":"run"' in html  # the run column of the tables (drawn from their JSON)
    assert "<title>first vs second — bench report</title>" in html
