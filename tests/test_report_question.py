"""A suite's question (`description`) and the table its `report.headline` asks for, at the top of its report."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bench.report import render_report
from tests.conftest import run_suite, tiny_suite

QUESTION = "Does dynamic INT8 keep the MLP's accuracy and robustness?"
HEADLINE = {"rows": ["compression"], "columns": ["clean", "robust_each", "drop", "budget", "size", "latency_gate"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    root = tmp_path_factory.mktemp("question")
    suite = tiny_suite(
        description=QUESTION,
        compressions=["none", {"name": "int8", "mode": "dynamic"}],
        attacks=["none", {"name": "fgsm", "eps": [0.05, 0.1]}],
        gate={"max_latency_ms": {"batch": 1, "percentile": "p50", "value": 10000}},
        report={"headline": HEADLINE},
    )
    code, records = run_suite(root, suite)
    assert code == 0, {k: r.get("error_summary") for k, r in records.items() if r["status"] != "ok"}
    return root, records


def _answer_table(html: str) -> list[list[str]]:
    table = re.search(r'<table class="answer">(.*?)</table>', html, re.S)
    assert table, "no answer table"
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)
    return [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)] for r in rows
    ]


def test_the_report_asks_the_suites_question_and_answers_it_in_its_table(run, tmp_path) -> None:
    root, records = run
    html = render_report([root / "run"], tmp_path / "report.html").read_text()
    assert QUESTION.replace("'", "&#39;") in html
    header, *rows = _answer_table(html)
    assert header == [
        "compression",
        "clean accuracy",
        "robust: fgsm-0.05",
        "robust: fgsm-0.1",
        "robustness drop (clean − robust)",
        "accuracy budget",
        "artifact size",
        "latency gate",
    ]
    assert [row[0] for row in rows] == ["none", "int8-dynamic"]  # one row per variant, in run order
    for row, compression in zip(rows, ("none", "int8-dynamic"), strict=True):
        cells = {r["labels"]["attack"]: r for r in records.values() if r["labels"]["compression"] == compression}
        clean = cells["none"]["clean_accuracy"]
        robust = [cells[a]["robust_accuracy"] for a in ("fgsm-0.05", "fgsm-0.1")]
        assert row[1] == f"{clean * 100:.1f}%"
        assert row[2:4] == [f"{r * 100:.1f}%" for r in robust]
        assert row[4] == f"{(clean - min(robust)) * 100:.1f} pts"
        assert row[7].startswith("pass (p50 ≤ 10000 ms)")
    assert rows[0][5] == "baseline" and rows[1][5] in ("kept", "lost")
    assert rows[1][6].endswith("kB") and rows[1][6] != rows[0][6]


def test_a_question_without_a_headline_is_shown_alone(run, tmp_path) -> None:
    import json

    root, _ = run
    meta = json.loads((root / "run" / "run.json").read_text())
    meta["suite"]["report"] = {"headline": None}
    (root / "run" / "run.json").write_text(json.dumps(meta))
    html = render_report([root / "run"], tmp_path / "report.html").read_text()
    assert QUESTION.replace("'", "&#39;") in html and '<table class="answer">' not in html


@pytest.mark.parametrize(
    "report,field",
    [
        ({"headline": {"columns": ["clean", "speed"]}}, "report.headline.columns"),
        ({"headline": {"rows": ["attack"]}}, "report.headline.rows"),
        ({"headline": {"rows": []}}, "report.headline.rows"),
        ({"table": {}}, "report"),
    ],
)
def test_a_bad_headline_names_the_field(tmp_path, report, field) -> None:
    from bench.errors import BenchInputError
    from bench.suite import load_suite
    from tests.conftest import write_suite

    path = write_suite(tmp_path / "suite.yaml", tiny_suite(report=report))
    with pytest.raises(BenchInputError) as info:
        load_suite(path)
    assert info.value.field == field


def test_every_headline_column_has_an_implementation() -> None:
    from bench.report.question import COLUMNS
    from bench.suite import HEADLINE_COLUMNS

    assert set(HEADLINE_COLUMNS) == set(COLUMNS) | {"robust_each"}
