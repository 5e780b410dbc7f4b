"""`bench compare BASELINE CANDIDATE`: every baseline cell walked; a regression needs a change beyond the threshold
and a test that supports it (exact McNemar on the same samples, Mann-Whitney on per-process medians).

Two real runs of the tiny suite (separate caches) are shared by the module; every other candidate is a copy of the
baseline run with a planted change."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import jsonl
from bench.compare import TOO_FEW
from bench.evidence import pack_bits, unpack_bits
from tests.conftest import run_cli, run_suite, tiny_suite
from tests.report_fixtures import report_grid

PROCESSES = 5  # pseudo-processes the planted tests split each artifact's samples into (Mann-Whitney p = 1/252)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two independent runs of the same tiny suite, each with its own cache."""
    root = tmp_path_factory.mktemp("compare")
    for name in ("base", "cand"):
        code, records = run_suite(root, tiny_suite(), name=name, cache=f"cache-{name}")
        assert code == 0, {cell_id: r.get("error") for cell_id, r in records.items() if r["status"] != "ok"}
    return root / "base", root / "cand"


# -- planting changes into copies of a run directory --------------------------------------------------------------


def _rewrite(path: Path, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
    """Rewrite each line of a JSON Lines file (a line for which `change` returns None is dropped)."""
    lines = [change(line) for line in jsonl.read(path)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines if line is not None))


def _copy(src: Path, dst: Path, processes: int | None = None) -> Path:
    shutil.copytree(src, dst)
    if processes is not None:
        _set_processes(dst, processes)
    return dst


def _set_processes(run_dir: Path, k: int) -> None:
    """Pool each artifact's samples and deal them out to k pseudo-processes (interleaved, so each is alike), as a
    measurement in k processes would give; the reference time is repeated per process."""

    def split(timings: dict[str, Any]) -> dict[str, Any]:
        for batch, processes in timings["processes"].items():
            pooled = [v for p in processes for v in p]
            assert len(pooled) >= k, f"batch {batch}: {len(pooled)} samples cannot make {k} processes"
            timings["processes"][batch] = [pooled[i::k] for i in range(k)]
        if timings.get("reference_ms"):
            timings["reference_ms"] = [float(np.median(timings["reference_ms"]))] * k
        return timings

    _rewrite(run_dir / "timings.jsonl", split)


def _plant_slowdown(run_dir: Path, factor: float = 2.0) -> None:
    """Every latency sample (and every latency figure of the records) times `factor`; reference times unchanged."""

    def slow_timings(timings: dict[str, Any]) -> dict[str, Any]:
        timings["processes"] = {b: [[v * factor for v in p] for p in ps] for b, ps in timings["processes"].items()}
        return timings

    def slow_record(record: dict[str, Any]) -> dict[str, Any]:
        for stats in (record.get("latency_ms") or {}).values():
            for key, value in stats.items():
                if key not in ("n", "insufficient") and isinstance(value, float):
                    stats[key] = value * factor
        return record

    _rewrite(run_dir / "timings.jsonl", slow_timings)
    _rewrite(run_dir / "cells.jsonl", slow_record)


def _plant_accuracy_drop(run_dir: Path, points: int = 20) -> None:
    """Flip `points`% of the samples from right to wrong (robust-correct ones first, so that clean and robust
    accuracy both drop by `points`) and lower the records' accuracies to match."""
    accuracies = {}

    def flip(item: dict[str, Any]) -> dict[str, Any]:
        n = item["n"]
        clean = unpack_bits(item["clean"], n).copy()
        robust = None if item["robust"] is None else unpack_bits(item["robust"], n).copy()
        chosen = np.flatnonzero(clean if robust is None else robust)[: round(n * points / 100)]
        clean[chosen] = False
        item["clean"] = pack_bits(clean)
        if robust is not None:
            robust[chosen] = False
            item["robust"] = pack_bits(robust)
        accuracies[item["cell_id"]] = (clean.mean(), None if robust is None else robust.mean())
        return item

    def lower(record: dict[str, Any]) -> dict[str, Any]:
        clean, robust = accuracies[record["cell_id"]]
        record["clean_accuracy"] = float(clean)
        record["robust_accuracy"] = None if robust is None else float(robust)
        return record

    _rewrite(run_dir / "correctness.jsonl", flip)
    _rewrite(run_dir / "cells.jsonl", lower)


def _edit_meta(run_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    change(meta)
    (run_dir / "run.json").write_text(json.dumps(meta))


def _ids(run_dir: Path) -> list[str]:
    return [r["cell_id"] for r in jsonl.read(run_dir / "cells.jsonl")]


def _lines_of(out: str, cell_id: str) -> str:
    """The table row of `cell_id` and its detail lines."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if f" {cell_id} " in f" {line} ")
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("    - ")), len(lines))
    return "\n".join(lines[start:end])


# -- the tests ----------------------------------------------------------------------------------------------------


def test_two_independent_runs_report_no_regression(runs: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    base, cand = runs
    code, out, _ = run_cli(["compare", base, cand], capsys)
    assert code == 0, out
    assert f"{len(_ids(base))} cells compared, 0 regressed" in out
    assert all(cell_id in out for cell_id in _ids(base))
    single = all(len(ps) == 1 for t in jsonl.read(base / "timings.jsonl") for ps in t["processes"].values())
    if single:  # one measurement process per artifact: a latency change is shown but never judged
        assert TOO_FEW in out


def test_planted_slowdown_and_accuracy_drop_are_named(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = _copy(runs[0], tmp_path / "base", processes=PROCESSES)
    cand = _copy(base, tmp_path / "cand")
    _plant_slowdown(cand)
    _plant_accuracy_drop(cand)
    code, out, _ = run_cli(
        ["compare", base, cand, "--json", tmp_path / "c.json", "--markdown", tmp_path / "c.md"], capsys
    )
    assert code == 1, out
    ids = _ids(base)
    for cell_id in ids:
        lines = _lines_of(out, cell_id)
        assert lines.startswith("REGRESSION"), lines
        assert "regression: clean accuracy -20.0 pts" in lines and "McNemar p<0.001" in lines
        for batch in ("1", "8"):
            assert f"regression: latency b{batch} x2.00" in lines
            assert f"Mann-Whitney p=0.004, {PROCESSES} vs {PROCESSES} processes" in lines
    fgsm = next(i for i in ids if "fgsm" in i)
    assert "regression: robust accuracy -20.0 pts" in _lines_of(out, fgsm)
    assert f"{len(ids)} cells compared, {len(ids)} regressed" in out

    report = json.loads((tmp_path / "c.json").read_text())
    assert report["summary"]["regressions"] == len(ids) and report["summary"]["exit_code"] == 1
    assert report["thresholds"]["latency"] == 0.10 and report["thresholds"]["accuracy"] == 0.02
    rows = {r["cell_id"]: r for r in report["rows"]}
    assert set(rows) == set(ids) and all(r["status"] == "regression" for r in rows.values())
    row = rows[fgsm]
    assert {a["metric"]: a["verdict"] for a in row["accuracy"]} == {"clean": "regression", "robust": "regression"}
    assert row["accuracy"][0]["diff_points"] == pytest.approx(-20.0)
    latency = {lat["batch"]: lat for lat in row["latency"]}
    assert latency["1"]["verdict"] == "regression" and latency["1"]["raw_ratio"] == pytest.approx(2.0)
    assert latency["1"]["processes"] == [PROCESSES, PROCESSES] and latency["1"]["p_value"] < 0.05
    if jsonl.read(base / "timings.jsonl")[0].get("reference_ms"):  # judged on the reference-normalised medians
        assert latency["1"]["judged_on"] == "raw and normalised"
        assert latency["1"]["normalised_ratio"] == pytest.approx(2.0)

    markdown = (tmp_path / "c.md").read_text()
    assert markdown.startswith(f"### ❌ bench compare: {len(ids)} regressions")
    assert "| status | cell | clean acc |" in markdown
    assert all(f"`{cell_id}`" in markdown for cell_id in ids)
    assert "-20.0 pts p<0.001 regression" in markdown and "clean accuracy -20.0 pts" in markdown


def test_a_slowdown_with_one_process_is_not_judged(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = _copy(runs[0], tmp_path / "base", processes=1)
    cand = _copy(base, tmp_path / "cand")
    _plant_slowdown(cand)
    code, out, _ = run_cli(["compare", base, cand, "--markdown", tmp_path / "c.md"], capsys)
    assert code == 0, out
    assert re.search(rf"b1 x2\.00( \(norm x2\.00\))?, b8 x2\.00( \(norm x2\.00\))? {TOO_FEW} \(1 vs 1\)", out), out
    assert out.count("changed  ") == len(_ids(base))  # shown as a change, not flagged
    assert "✅ bench compare: no regression" in (tmp_path / "c.md").read_text()


def test_a_candidate_whose_cells_all_failed_is_caught(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cand = _copy(runs[0], tmp_path / "cand")
    keep = ("cell_id", "model", "recipe", "compression", "runtime", "attack", "labels", "dataset", "seed", "device")

    def fail(record: dict[str, Any]) -> dict[str, Any]:
        error = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: export exploded'
        return {k: record[k] for k in keep} | {"status": "failed", "reason": None, "error": error}

    _rewrite(cand / "cells.jsonl", fail)
    code, out, _ = run_cli(["compare", runs[0], cand], capsys)
    assert code == 1
    for cell_id in _ids(runs[0]):
        assert "regression: now failed: RuntimeError: export exploded" in _lines_of(out, cell_id)
    assert f"{len(_ids(runs[0]))} regressed" in out


def test_lost_skipped_and_new_cells(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = runs[0]
    first, second = _ids(base)
    cand = _copy(base, tmp_path / "cand")
    records = jsonl.read(cand / "cells.jsonl")
    skipped = {k: v for k, v in records[0].items() if k in ("cell_id", "labels", "model", "seed", "device")}
    new = dict(skipped) | {"cell_id": "mlp/standard/none/onnxruntime/none", "status": "ok"}
    skipped |= {"status": "skipped", "reason": "runtime tensorrt is not installed"}
    (cand / "cells.jsonl").write_text(json.dumps(skipped) + "\n" + json.dumps(new) + "\n")  # the second is lost
    code, out, _ = run_cli(["compare", base, cand, "--json", tmp_path / "c.json"], capsys)
    assert code == 1
    assert "regression: missing" in _lines_of(out, second)
    assert "regression: now skipped: runtime tensorrt is not installed" in _lines_of(out, first)
    assert _lines_of(out, new["cell_id"]).startswith("new (ok)")
    summary = json.loads((tmp_path / "c.json").read_text())["summary"]
    assert summary == summary | {"baseline_cells": 2, "regressions": 2, "new": 1, "exit_code": 1}


def test_different_eval_samples_are_not_comparable(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cand = _copy(runs[0], tmp_path / "cand")
    _plant_accuracy_drop(cand)
    _rewrite(cand / "correctness.jsonl", lambda item: item | {"eval_sha256": "0" * 64})
    code, out, _ = run_cli(["compare", runs[0], cand], capsys)
    assert code == 0, out  # a drop on other samples proves nothing
    for cell_id in _ids(runs[0]):
        lines = _lines_of(out, cell_id)
        assert lines.startswith("not comparable") and "-20.0 pts not comparable" in lines
        assert "different eval samples (eval_sha256 differs)" in lines


def test_an_environment_difference_is_not_comparable_unless_forced(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cand = _copy(runs[0], tmp_path / "cand")
    _plant_accuracy_drop(cand)
    _edit_meta(cand, lambda meta: meta["environment"].update(cpu="Imaginary CPU 9000", torch_threads=64))
    code, out, _ = run_cli(["compare", runs[0], cand], capsys)
    assert code == 0, out
    assert "environment differs: CPU" in out and "--force compares anyway" in out
    for cell_id in _ids(runs[0]):
        lines = _lines_of(out, cell_id)
        assert lines.startswith("not comparable") and "not comparable: CPU differs:" in lines
        assert "beyond threshold, not judged" in lines
    code, out, _ = run_cli(["compare", runs[0], cand, "--force"], capsys)
    assert code == 1, out
    assert "regression: clean accuracy -20.0 pts" in out and "compared anyway: --force" in out


def test_settings_and_thresholds(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cand = _copy(runs[0], tmp_path / "cand")
    _plant_accuracy_drop(cand)
    fgsm = next(i for i in _ids(cand) if "fgsm" in i)

    def other_eps(record: dict[str, Any]) -> dict[str, Any]:
        if record["cell_id"] == fgsm:
            record["attack"]["eps"] = 0.2
            record["settings_hash"]["attack"] = "changed"
        return record

    _rewrite(cand / "cells.jsonl", other_eps)
    # the candidate suite's gate: section sets the thresholds; the command line overrides it
    _edit_meta(cand, lambda meta: meta["suite"].setdefault("gate", {}).update(accuracy_threshold=0.25))
    code, out, _ = run_cli(["compare", runs[0], cand], capsys)
    assert code == 0, out
    assert "accuracy 25 pts" in out
    assert "-20.0 pts p<0.001 worse, below threshold" in out
    assert "attack: eps 0.1 -> 0.2" in _lines_of(out, fgsm)
    code, out, _ = run_cli(["compare", runs[0], cand, "--accuracy-threshold", "0.05"], capsys)
    assert code == 1 and "accuracy 5 pts" in out


def test_report_renders_compare_rows(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cand = _copy(runs[0], tmp_path / "cand")
    _plant_accuracy_drop(cand)
    code, _, _ = run_cli(["report", cand, "--baseline", runs[0], "-o", tmp_path / "r.html"], capsys)
    assert code == 0
    html = (tmp_path / "r.html").read_text()
    assert "Comparison with baseline" in html
    grid = report_grid(html, "comparison")  # a paged, sortable grid: its rows travel as JSON in the page
    cells = [c for row in grid["rows"] for c in row if isinstance(c, dict)]
    regressed = [c for c in cells if c["t"] == "-20.0 pts p<0.001 regression"]
    assert regressed and all("worse" in c.get("c", "").split() for c in regressed)  # the regressed metric in red
    assert "failed" in grid["classes"]  # the regression row is marked


def test_not_a_run_directory_is_bad_input(runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(["compare", tmp_path / "nope", runs[0]], capsys)
    assert code == 2 and "not a run directory" in err and len(err.strip().splitlines()) == 1 and not out
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    code, _, err = run_cli(["compare", runs[0], broken], capsys)
    assert code == 2 and "unreadable run.json" in err and len(err.strip().splitlines()) == 1
