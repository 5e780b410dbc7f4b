"""`bench publish RUN_DIR... --site DIR [--keep N]`: a static site of runs, for file:// and any static host.

The site (docs/publishing.md):

    DIR/site.json                  the manifest: every published run with its summary and its cells' key metrics
    DIR/index.html                 the runs, newest first, with their headline figures
    DIR/trends.html                per suite: clean / robust accuracy and p50 latency of each cell across runs,
                                   regressions against the previous run of the suite marked
    DIR/assets/plotly.min.js       the one copy of plotly.js every page loads (relative links only)
    DIR/runs/ID/report.html        one report per run (bench.report.render_report)
    DIR/runs/ID/evidence/          run.json, cells.jsonl, timings.jsonl, correctness.jsonl of the newest run of
                                   each suite: what the next run of that suite is compared with (bench.compare)

Adding a run renders that run's report only; index and trends are rebuilt from the manifest. Every page embeds
its data (nothing is fetched), so the site works from file:// as well as from a web server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from bench.errors import BenchInputError
from bench.rundir import RUN_FILE, read_run_meta

SITE_FILE = "site.json"
SITE_FORMAT = "bench-site"
SITE_VERSION = 1
PLOTLY_ASSET = "assets/plotly.min.js"
RUNS_DIR = "runs"
REPORT_FILE = "report.html"
EVIDENCE_DIR = "evidence"
CELLS_FILE = "cells.jsonl"
EVIDENCE_FILES = (RUN_FILE, CELLS_FILE, "timings.jsonl", "correctness.jsonl")
MAX_TRACES = 40  # cells drawn per trends chart (regressed cells first); the table lists every cell
TREND_RUNS = 30  # the newest runs of a suite on the trends page (the site may keep more reports)
TABLE_RUNS = 10  # of which the trends table shows each cell's values in the newest ones

HEADLINES = ("best_clean", "best_robust", "fastest_p50")  # the headline figures of a run on the index
# The per-cell values kept in the manifest, in this order (compact: a nightly has thousands of cells).
CELL_FIELDS = ("status", "clean", "robust", "p50")


@dataclasses.dataclass
class PublishResult:
    site: Path
    added: list[str]  # run ids rendered by this call
    already: list[str]  # run ids that were published before (left as they are)
    removed: list[str]  # run ids dropped by --keep
    runs: int  # runs in the site afterwards


# -- inputs -------------------------------------------------------------------------------------------------------


def _empty_manifest() -> dict[str, Any]:
    return {"format": SITE_FORMAT, "version": SITE_VERSION, "runs": []}


def load_site(site: Path) -> dict[str, Any]:
    """The manifest of `site`; a fresh one for a missing or empty folder; BenchInputError for anything else."""
    site = Path(site)
    if site.exists() and not site.is_dir():
        raise BenchInputError("not a site directory (a file)", file=str(site))
    manifest_path = site / SITE_FILE
    if not manifest_path.exists():
        if site.is_dir() and any(site.iterdir()):
            raise BenchInputError(f"not a bench site (no {SITE_FILE}) and not empty", file=str(site))
        return _empty_manifest()
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchInputError(f"unreadable {SITE_FILE}: {exc}", file=str(site)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != SITE_FORMAT:
        raise BenchInputError(f"not a bench site ({SITE_FILE} has no format {SITE_FORMAT!r})", file=str(site))
    if manifest.get("version") != SITE_VERSION or not isinstance(manifest.get("runs"), list):
        raise BenchInputError(f"{SITE_FILE}: unsupported version {manifest.get('version')!r}", file=str(site))
    return manifest


# -- one run's summary --------------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _p50s(record: Any) -> dict[int, float]:
    out = {}
    for key, stats in (record.latency_ms or {}).items():
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            value = _num(stats.p50)
            if value is not None:
                out[int(key)] = value
    return out


def run_id(meta: dict[str, Any], run_dir: Path) -> str:
    """A stable id: the start time, the suite's name and a hash of what tells two runs apart."""
    started = str(meta.get("started_at") or "")
    stamp = re.sub(r"[^0-9T]", "", started.split("+")[0])[:15] or "unknown"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(meta.get("name") or run_dir.name)).strip("-.")[:40] or "run"
    env = meta.get("environment") if isinstance(meta.get("environment"), dict) else {}
    identity = [meta.get("name"), started, meta.get("suite_hash"), meta.get("shard"), env.get("hostname")]
    if not started:  # no start time: the folder's contents tell it apart
        identity.append(hashlib.sha256((run_dir / RUN_FILE).read_bytes()).hexdigest())
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{stamp}-{name}-{digest}"


def summarize(run_dir: Path, meta: dict[str, Any], records: list[Any]) -> dict[str, Any]:
    """The manifest entry of one run (without its comparison)."""
    env = meta.get("environment") if isinstance(meta.get("environment"), dict) else {}
    last = {str(r.cell_id): r for r in records if r.cell_id}  # a resumed run may repeat a cell: the last wins
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    for record in last.values():
        if record.status in counts:
            counts[record.status] += 1
    batches = sorted({b for r in last.values() if r.status == "ok" for b in _p50s(r)})
    batch = 1 if 1 in batches else (batches[0] if batches else None)
    cells: dict[str, list[Any]] = {}
    best_clean = best_robust = fastest = None
    for cell_id, record in last.items():
        clean, robust = _num(record.clean_accuracy), _num(record.robust_accuracy)
        p50 = _p50s(record).get(batch) if batch is not None else None
        cells[cell_id] = [record.status, clean, robust, p50]
        if record.status != "ok":
            continue
        if clean is not None and (best_clean is None or clean > best_clean["value"]):
            best_clean = {"value": clean, "cell": cell_id}
        if robust is not None and (best_robust is None or robust > best_robust["value"]):
            best_robust = {"value": robust, "cell": cell_id}
        if p50 is not None and (fastest is None or p50 < fastest["value"]):
            fastest = {"value": p50, "cell": cell_id}
    gates = meta.get("gates") if isinstance(meta.get("gates"), dict) else {}
    commit = env.get("git_commit")
    return {
        "id": run_id(meta, run_dir),
        "name": str(meta.get("name") or run_dir.name),
        "started_at": meta.get("started_at"),
        "finished_at": meta.get("finished_at"),
        "run_status": meta.get("status"),
        "commit": commit if isinstance(commit, str) else None,
        "dirty": bool(env.get("git_dirty")),
        "device": meta.get("device"),
        "source": run_dir.name,
        "counts": counts,
        "gates_failed": int(gates.get("fail") or 0) if isinstance(gates.get("fail"), int) else 0,
        "best_clean": best_clean,
        "best_robust": best_robust,
        "fastest_p50": fastest,
        "latency_batch": batch,
        "report": f"{RUNS_DIR}/{{id}}/{REPORT_FILE}",
        "compared_with": None,
        "comparison": None,
        "regressions": {},
        "cells": cells,
    }


def status_of(entry: dict[str, Any]) -> str:
    """One word for the index: failed (a cell or a gate), regression (against the previous run), incomplete, ok."""
    if entry["counts"]["failed"] or entry["gates_failed"]:
        return "failed"
    if entry["regressions"]:
        return "regression"
    if entry.get("run_status") not in (None, "complete"):
        return "incomplete"
    return "ok"


# -- comparison with the previous run of the suite ---------------------------------------------------------------


def _compare(previous: Any, candidate: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    from bench.compare import compare_runs, resolve_thresholds

    comparison = compare_runs(previous, candidate, resolve_thresholds(candidate.meta))
    regressions = {r.cell_id: list(r.problems) or ["regression"] for r in comparison.regressions}
    return comparison.summary(), regressions


# -- the site -----------------------------------------------------------------------------------------------------


def _sort_key(entry: dict[str, Any]) -> tuple[str, str]:
    return (str(entry.get("started_at") or ""), entry["id"])


def _write_text(path: Path, text: str) -> None:
    """Write atomically (a reader or an interrupted publish never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_plotly(site: Path) -> None:
    """DIR/assets/plotly.min.js from the installed plotly package, rewritten only when it differs."""
    from plotly.offline import get_plotlyjs

    path = site / PLOTLY_ASSET
    text = get_plotlyjs()
    if path.is_file() and path.stat().st_size == len(text.encode("utf-8")) and path.read_text("utf-8") == text:
        return
    _write_text(path, text)


def _copy_evidence(run_dir: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in EVIDENCE_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def publish(run_dirs: list[Path], site: Path, keep: int | None = None) -> PublishResult:
    """Add `run_dirs` to the site in `site` (created when missing), keep the newest `keep` runs, rebuild the pages."""
    from bench.compare import RunEvidence, load_evidence
    from bench.record import read_records
    from bench.report import render_report

    site = Path(site)
    if keep is not None and keep < 1:
        raise BenchInputError(f"must be at least 1, got {keep}", field="--keep")
    manifest = load_site(site)
    metas = [(Path(d), read_run_meta(Path(d))) for d in run_dirs]  # every input checked before anything is written

    runs = {entry["id"]: entry for entry in manifest["runs"]}
    new: list[tuple[dict[str, Any], Path, list[Any]]] = []
    already = []
    for run_dir, meta in metas:
        records = read_records(run_dir / CELLS_FILE)
        entry = summarize(run_dir, meta, records)
        if entry["id"] in runs or any(e["id"] == entry["id"] for e, _, _ in new):
            already.append(entry["id"])
            continue
        entry["report"] = entry["report"].format(id=entry["id"])
        new.append((entry, run_dir, records))
    new.sort(key=lambda item: _sort_key(item[0]))

    site.mkdir(parents=True, exist_ok=True)
    _write_plotly(site)
    evidence: dict[str, Any] = {}  # run id -> RunEvidence of the runs added now (read from their run directories)
    for entry, run_dir, records in new:
        runs[entry["id"]] = entry
        previous = max(
            (e for e in runs.values() if e["name"] == entry["name"] and _sort_key(e) < _sort_key(entry)),
            key=_sort_key,
            default=None,
        )
        candidate = RunEvidence.from_parts(run_dir, read_run_meta(run_dir), records)
        evidence[entry["id"]] = candidate
        if previous is not None:
            entry["compared_with"] = previous["id"]
            base = evidence.get(previous["id"])
            stored = site / RUNS_DIR / previous["id"] / EVIDENCE_DIR
            if base is None and (stored / RUN_FILE).is_file():
                base = load_evidence(stored)
            if base is None:
                entry["comparison"] = {"note": "the previous run's evidence is no longer in the site: not compared"}
            else:
                summary, entry["regressions"] = _compare(base, candidate)
                entry["comparison"] = summary
        out = site / entry["report"]
        render_report([run_dir], out, plotly_src=os.path.relpath(site / PLOTLY_ASSET, out.parent).replace("\\", "/"))

    # --keep: the newest N runs stay
    ordered = sorted(runs.values(), key=_sort_key, reverse=True)
    removed = [e["id"] for e in ordered[keep:]] if keep is not None else []
    for run in removed:
        shutil.rmtree(site / RUNS_DIR / run, ignore_errors=True)
        runs.pop(run)
    ordered = [e for e in ordered if e["id"] in runs]

    # evidence: kept for the newest run of each suite only (what the next run of that suite is compared with)
    newest: dict[str, str] = {}
    for entry in ordered:
        newest.setdefault(entry["name"], entry["id"])
    sources = {entry["id"]: run_dir for entry, run_dir, _ in new}
    for entry in ordered:
        dest = site / RUNS_DIR / entry["id"] / EVIDENCE_DIR
        if newest[entry["name"]] != entry["id"]:
            shutil.rmtree(dest, ignore_errors=True)
        elif entry["id"] in sources:
            _copy_evidence(sources[entry["id"]], dest)

    manifest["runs"] = ordered
    write_pages(site, manifest)
    _write_text(site / SITE_FILE, json.dumps(manifest, separators=(",", ":")) + "\n")  # cells in suite order
    added = [entry["id"] for entry, _, _ in new if entry["id"] in runs]
    return PublishResult(site, added, already, removed, len(ordered))


# -- pages --------------------------------------------------------------------------------------------------------


def _script_json(data: Any) -> Markup:
    # "<" only occurs inside JSON strings, where \u003c means the same: a cell id cannot close the script early
    return Markup(json.dumps(data, separators=(",", ":")).replace("<", "\\u003c"))


def _when(value: Any) -> str:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value or "?")
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M") + (" UTC" if moment.tzinfo is not None else "")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "report"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=_when, pct=_pct, ms=_ms)
    return env


def _index_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for entry in runs:
        best = {k: {"value": None, "cell": "", **(entry.get(k) or {})} for k in HEADLINES}
        comparison = entry.get("comparison") or {}
        if entry.get("compared_with") is None:
            vs = {"text": "first run", "sort": -1, "title": "no earlier run of this suite in the site"}
        elif "regressions" not in comparison:
            vs = {"text": "not compared", "sort": -1, "title": comparison.get("note", "")}
        else:
            n = len(entry["regressions"])
            vs = {"text": str(n), "sort": n, "title": f"against {entry['compared_with']}"}
        rows.append(
            {
                "entry": entry,
                "status": status_of(entry),
                "best": best,
                "vs": vs,
                "batch": entry.get("latency_batch"),
            }
        )
    return rows


def _round(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _trends(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per suite (newest suite first): its last TREND_RUNS runs oldest first and each cell's series."""
    suites: dict[str, list[dict[str, Any]]] = {}
    for entry in sorted(runs, key=_sort_key, reverse=True):
        suites.setdefault(entry["name"], []).append(entry)
    out = []
    for index, (name, entries) in enumerate(suites.items()):
        entries = sorted(entries[:TREND_RUNS], key=_sort_key)
        cell_ids: dict[str, None] = {}
        for entry in reversed(entries):  # the newest run's order first, then cells only older runs have
            cell_ids.update(dict.fromkeys(entry["cells"]))
        cells = []
        for cell_id in cell_ids:
            series: dict[str, list[Any]] = {field: [] for field in CELL_FIELDS[1:]}
            regressed = []
            for i, entry in enumerate(entries):
                values = entry["cells"].get(cell_id) or [None] * len(CELL_FIELDS)
                for field, value in zip(CELL_FIELDS[1:], values[1:], strict=True):
                    series[field].append(_round(value))
                if cell_id in entry["regressions"]:
                    regressed.append([i, "; ".join(entry["regressions"][cell_id])])
            cells.append({"id": cell_id, **series, "regressed": regressed})
        cells.sort(key=lambda c: not c["regressed"])  # stable: regressed cells first, suite order within
        batches = sorted({e["latency_batch"] for e in entries if e.get("latency_batch") is not None})
        out.append(
            {
                "key": f"suite{index}",
                "name": name,
                "runs": [
                    {
                        "id": e["id"],
                        "label": f"{_when(e['started_at'])} · {(e.get('commit') or '?')[:7]}",
                        "report": e["report"],
                        "status": status_of(e),
                    }
                    for e in entries
                ],
                "cells": cells,
                "regressed": [c for c in cells if c["regressed"]],
                "batch": ", ".join(str(b) for b in batches) or "?",
                "regressions": sum(len(e["regressions"]) for e in entries),
            }
        )
    return out


def write_pages(site: Path, manifest: dict[str, Any]) -> None:
    """index.html and trends.html from the manifest."""
    env = _env()
    runs = sorted(manifest["runs"], key=_sort_key, reverse=True)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    index = env.get_template("site_index.html.j2").render(rows=_index_rows(runs), generated=generated)
    _write_text(site / "index.html", index)
    suites = _trends(runs)
    chart_data = [
        {
            "key": s["key"],
            "name": s["name"],
            "batch": s["batch"],
            "runs": [r["label"] for r in s["runs"]],
            "cells": s["cells"],
            "traces": MAX_TRACES,
            "table_runs": TABLE_RUNS,
        }
        for s in suites
    ]
    trends = env.get_template("site_trends.html.j2").render(
        suites=suites,
        data=_script_json(chart_data),
        max_traces=MAX_TRACES,
        trend_runs=TREND_RUNS,
        table_runs=TABLE_RUNS,
        plotly_src=PLOTLY_ASSET,
        generated=generated,
    )
    _write_text(site / "trends.html", trends)
