"""`bench publish RUN_DIR... --site DIR [--keep N]`: a static site of runs, added one at a time.

One real tiny run is copied into three runs of one suite on three days; the third has a planted clean-accuracy drop
in one cell, which `bench compare` (against the second) judges a regression and the trends page marks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import jsonl
from bench.evidence import pack_bits, unpack_bits
from bench.publish import PLOTLY_ASSET, SITE_FILE
from tests.conftest import run_cli, run_suite, tiny_suite
from tests.report_fixtures import plotly_source

DAYS = ("2026-03-01T02:17:00+00:00", "2026-03-02T02:17:00+00:00", "2026-03-03T02:17:00+00:00")
PLANTED = "mlp/standard/none/eager/none"  # the cell whose clean accuracy drops in the third run


def _rewrite(path: Path, change: Any) -> None:
    lines = [change(line) for line in jsonl.read(path)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _copy_run(src: Path, dst: Path, started_at: str, commit: str) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report.html"))
    meta = json.loads((dst / "run.json").read_text())
    meta["started_at"] = meta["finished_at"] = started_at
    meta["environment"]["git_commit"] = commit
    (dst / "run.json").write_text(json.dumps(meta))
    return dst


def _plant_accuracy_drop(run_dir: Path, cell_id: str, points: int = 25) -> None:
    """`points`% of the samples of one cell flipped from right to wrong, its record's clean accuracy lowered."""
    accuracy = {}

    def flip(item: dict[str, Any]) -> dict[str, Any]:
        if item["cell_id"] == cell_id:
            clean = unpack_bits(item["clean"], item["n"]).copy()
            clean[np.flatnonzero(clean)[: round(item["n"] * points / 100)]] = False
            item["clean"] = pack_bits(clean)
            accuracy["clean"] = float(clean.mean())
        return item

    def lower(record: dict[str, Any]) -> dict[str, Any]:
        if record["cell_id"] == cell_id:
            record["clean_accuracy"] = accuracy["clean"]
        return record

    _rewrite(run_dir / "correctness.jsonl", flip)
    _rewrite(run_dir / "cells.jsonl", lower)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three runs of the tiny suite on three days (copies of one real run); the third with the planted drop."""
    root = tmp_path_factory.mktemp("publish")
    code, records = run_suite(root, tiny_suite())
    assert code == 0, {cell_id: r.get("error") for cell_id, r in records.items() if r["status"] != "ok"}
    runs = [_copy_run(root / "run", root / f"day{i + 1}", day, f"{i + 1:07x}" * 5) for i, day in enumerate(DAYS)]
    _plant_accuracy_drop(runs[2], PLANTED)
    return runs


def _manifest(site: Path) -> dict[str, Any]:
    return json.loads((site / SITE_FILE).read_text())


def _index_ids(site: Path) -> list[str]:
    return re.findall(r'data-run-id="([^"]+)"', (site / "index.html").read_text())


def _publish(args: list[Any], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    return run_cli(["publish", *args], capsys)


def test_publish_three_runs_one_at_a_time(three_runs: list[Path], tmp_path: Path, capsys) -> None:
    site = tmp_path / "site"
    ids: list[str] = []
    for i, run in enumerate(three_runs):
        code, out, err = _publish([run, "--site", site], capsys)
        assert code == 0, err
        (added,) = re.findall(r"^published (\S+)$", out, flags=re.M)
        ids.append(added)
        assert f"({i + 1} runs)" in out
        assert _index_ids(site) == ids[::-1], "the index lists the runs newest first"
        assert (site / "runs" / added / "report.html").is_file()
        if i == 0:  # an old mtime: a re-render of the first report by a later publish would change it
            first_report = site / "runs" / added / "report.html"
            os.utime(first_report, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    assert first_report.stat().st_mtime_ns == 1_000_000_000_000_000_000, "an existing report was re-rendered"

    # the index: commit, status and headline figures of each run
    index = (site / "index.html").read_text()
    assert "0000003" in index and 'href="runs/' in index and 'href="trends.html"' in index
    runs = {entry["id"]: entry for entry in _manifest(site)["runs"]}
    first, second, third = (runs[i] for i in ids)
    assert first["compared_with"] is None and second["compared_with"] == first["id"]
    assert third["compared_with"] == second["id"]
    assert second["regressions"] == {} and second["comparison"]["regressions"] == 0
    assert set(third["regressions"]) == {PLANTED}
    assert any("clean accuracy" in problem for problem in third["regressions"][PLANTED])
    assert third["best_clean"]["value"] > 0.5 and third["fastest_p50"]["value"] > 0
    assert first["counts"] == {"ok": 2, "skipped": 0, "failed": 0}
    rows = {run: status for status, run in re.findall(r'<tr class="(\w+)" data-run-id="([^"]+)"', index)}
    assert rows == {ids[0]: "ok", ids[1]: "ok", ids[2]: "regression"}

    # the trends page marks the planted regression (and only it), with its run and the reason
    trends = (site / "trends.html").read_text()
    marked = re.findall(r'<li class="regression" data-cell="([^"]+)">(.*?)</li>', trends, flags=re.S)
    assert [cell for cell, _ in marked] == [PLANTED]
    assert "clean accuracy -25.0 pts" in marked[0][1] and DAYS[2][:10] in marked[0][1]
    data = json.loads(re.search(r'<script type="application/json" id="trends-data">(.*?)</script>', trends).group(1))
    (suite,) = data
    assert len(suite["runs"]) == 3 and {c["id"] for c in suite["cells"]} == set(first["cells"])
    regressed = {c["id"]: c["regressed"] for c in suite["cells"] if c["regressed"]}
    assert list(regressed) == [PLANTED] and regressed[PLANTED][0][0] == 2  # marked at the third run
    assert '<script type="text/x-plotly" id="plotly-lib" data-src="assets/plotly.min.js">' in trends

    # one plotly.js in the whole site, referenced relatively by every report
    scripts = [p for p in site.rglob("*.js")]
    assert scripts == [site / PLOTLY_ASSET]
    for run in ids:
        report = site / "runs" / run / "report.html"
        html = report.read_text()
        src = plotly_source(html)
        assert src is not None
        assert not src.startswith(("/", "http:", "https:", "file:")), src
        assert (report.parent / src).resolve() == (site / PLOTLY_ASSET).resolve()
        assert report.stat().st_size < 1_000_000, "plotly.js is not inlined into a published report"

    # the evidence of the newest run only (what the next run of the suite is compared with)
    assert [p.parent.name for p in site.glob("runs/*/evidence")] == [ids[2]]

    # publishing a run again changes nothing; --keep 2 removes the oldest run
    code, out, _ = _publish([three_runs[1], "--site", site, "--keep", "2"], capsys)
    assert code == 0 and f"already published: {ids[1]}" in out and f"removed (--keep 2): {ids[0]}" in out
    assert not (site / "runs" / ids[0]).exists()
    assert _index_ids(site) == [ids[2], ids[1]]
    assert [e["id"] for e in _manifest(site)["runs"]] == [ids[2], ids[1]]
    assert ids[0] not in (site / "trends.html").read_text()
    assert (site / "runs" / ids[2] / "evidence" / "run.json").is_file()


def test_publish_several_runs_at_once_in_any_order(three_runs: list[Path], tmp_path: Path, capsys) -> None:
    site = tmp_path / "site"
    code, _out, err = _publish([three_runs[2], three_runs[0], three_runs[1], "--site", site, "--keep", "5"], capsys)
    assert code == 0, err
    entries = _manifest(site)["runs"]
    assert [e["started_at"] for e in entries] == list(DAYS[::-1])
    assert set(entries[0]["regressions"]) == {PLANTED} and entries[1]["regressions"] == {}


def test_bad_input_exits_2_with_one_line(three_runs: list[Path], tmp_path: Path, capsys) -> None:
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    code, _out, err = _publish([not_a_run, "--site", tmp_path / "site"], capsys)
    assert code == 2 and err.count("\n") == 1 and str(not_a_run) in err and "not a run directory" in err
    assert not (tmp_path / "site").exists(), "nothing is written before the input is checked"

    not_a_site = tmp_path / "docs"
    not_a_site.mkdir()
    (not_a_site / "notes.txt").write_text("mine")
    code, _out, err = _publish([three_runs[0], "--site", not_a_site], capsys)
    assert code == 2 and err.count("\n") == 1 and str(not_a_site) in err and "not a bench site" in err
    assert sorted(p.name for p in not_a_site.iterdir()) == ["notes.txt"]

    (not_a_site / SITE_FILE).write_text('{"something": "else"}')
    code, _out, err = _publish([three_runs[0], "--site", not_a_site], capsys)
    assert code == 2 and err.count("\n") == 1 and str(not_a_site) in err

    a_file = tmp_path / "file.html"
    a_file.write_text("")
    code, _out, err = _publish([three_runs[0], "--site", a_file], capsys)
    assert code == 2 and err.count("\n") == 1 and str(a_file) in err
