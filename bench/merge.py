"""`bench merge SHARD_DIR... --out DIR`: the run directories of one suite's shards -> one run directory equal to a
single run of the suite.

- cells.jsonl: every shard's records, unchanged, in the suite's cell order (rebuilt from the resolved suite in
  run.json: the product of the axis lists, minus `exclude`, plus the cells `include` adds, as bench.matrix does);
- stages.jsonl, timings.jsonl, correctness.jsonl: the shards' lines, one per stage key / measure key / cell id, in
  the order a single run would have written them (by the first cell that used each);
- run.json: recomputed over the whole (counts, run-level invariants, n_cells, start and finish times), `shard`
  null and `shards` listing each input with its shard index, cells, cache and environment;
- report.html, rendered from the merged directory.

Refused with a BenchInputError (one line, exit 2) before anything is written: a directory that is not a run
directory or not a shard, a shard that is not complete, shards of different suites, seeds, devices or shard
counts, the same shard index twice, a missing shard index, the same cell in two shards, a suite cell in no shard,
and an --out that already exists and is not empty. The merged directory is built in a temporary sibling and
renamed into place, so an error never leaves half a directory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench import jsonl
from bench.entries import AXES, PLURAL, RULE_KEYS
from bench.errors import BenchInputError
from bench.evidence import CORRECTNESS_FILE, TIMINGS_FILE
from bench.invariants import run_invariants
from bench.record import SCHEMA_VERSION
from bench.rules import rule_matches

RUN_FILE, CELLS_FILE, STAGES_FILE, REPORT_FILE = "run.json", "cells.jsonl", "stages.jsonl", "report.html"
PER_SHARD_KEYS = ("resumed_at", "interrupted_at")  # run.json keys that describe one shard's process only


@dataclasses.dataclass
class Shard:
    dir: Path
    meta: dict[str, Any]
    records: list[dict[str, Any]]  # cells.jsonl, one per cell id (the last line wins, as readers do)

    @property
    def index(self) -> int:
        return int(self.meta["shard"][0])

    @property
    def count(self) -> int:
        return int(self.meta["shard"][1])

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def _error(path: Path | None, message: str) -> BenchInputError:
    return BenchInputError(message, file=str(path) if path is not None else None)


def read_shard(path: Path) -> Shard:
    """A complete shard's run directory, or a BenchInputError naming it."""
    path = Path(path)
    if not (path / RUN_FILE).is_file():
        raise _error(path, f"not a run directory (no {RUN_FILE})")
    try:
        meta = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _error(path, f"not a run directory ({RUN_FILE} does not read as JSON: {exc})") from None
    if not isinstance(meta, dict):
        raise _error(path, f"not a run directory ({RUN_FILE} is not a JSON object)")
    shard = meta.get("shard")
    if not (
        isinstance(shard, list)
        and len(shard) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
        and 1 <= shard[0] <= shard[1]
    ):
        raise _error(path, f'not a shard: {RUN_FILE} has no "shard": [I, N] (write shards with bench run --shard I/N)')
    if meta.get("status") != "complete":
        raise _error(
            path,
            f"shard {shard[0]}/{shard[1]} is {meta.get('status') or 'unfinished'}, not complete; finish it with "
            f"bench run SUITE --out {path} --shard {shard[0]}/{shard[1]} --resume",
        )
    if not meta.get("suite_hash"):
        raise _error(path, f"{RUN_FILE} has no suite_hash (written by an older bench): run the shard again")
    by_id: dict[str, dict[str, Any]] = {}
    for record in jsonl.read(path / CELLS_FILE):
        if isinstance(record, dict) and isinstance(record.get("cell_id"), str):
            by_id[record["cell_id"]] = record
    if len(by_id) != meta.get("n_cells"):
        raise _error(path, f"shard {shard[0]}/{shard[1]} holds {len(by_id)} of its {meta.get('n_cells')} cells")
    return Shard(path, meta, list(by_id.values()))


def check_out(out: Path) -> None:
    if (out / RUN_FILE).exists() or (out / CELLS_FILE).exists():
        raise _error(out, "already holds a run; choose another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise _error(out, "exists and is not an empty directory; choose another --out")


def check_shards(shards: Sequence[Shard]) -> None:
    """One suite, seed, device and split; every shard index once; no cell in two shards."""
    first = shards[0]
    for shard in shards[1:]:
        seed, first_seed = shard.meta.get("seed"), first.meta.get("seed")
        if seed != first_seed:
            raise _error(shard.dir, f"seed {seed} differs from {first.dir}'s seed {first_seed}")
        suite_hash, first_hash = shard.meta["suite_hash"], first.meta["suite_hash"]
        if suite_hash != first_hash:
            raise _error(shard.dir, f"another suite than {first.dir}'s (suite_hash {suite_hash} != {first_hash})")
        if shard.meta.get("device") != first.meta.get("device"):
            raise _error(shard.dir, f"ran on {shard.meta.get('device')}, {first.dir} on {first.meta.get('device')}")
        if shard.count != first.count:
            raise _error(shard.dir, f"is shard {shard.label} but {first.dir} is shard {first.label}: another split")
    seen: dict[int, Shard] = {}
    for shard in shards:
        if shard.index in seen:
            raise _error(shard.dir, f"shard {shard.label} given twice (also {seen[shard.index].dir})")
        seen[shard.index] = shard
    missing = [i for i in range(1, first.count + 1) if i not in seen]
    if missing:
        given = ", ".join(f"{s.label} {s.dir}" for s in sorted(shards, key=lambda s: s.index))
        raise _error(None, f"shard {', '.join(f'{i}/{first.count}' for i in missing)} missing (given: {given})")
    owner: dict[str, Shard] = {}
    for shard in sorted(shards, key=lambda s: s.index):
        for record in shard.records:
            other = owner.setdefault(record["cell_id"], shard)
            if other is not shard:
                raise _error(shard.dir, f"cell {record['cell_id']} is also in {other.dir}: the shards overlap")


# -- the suite's cell order, from run.json's resolved suite ------------------------------------------------------


class _Entry:
    """An axis entry as run.json and the records hold it (`{"name", parameters..., "label"}`), shaped like a
    bench.entries.Choice for bench.rules (name, label, record())."""

    def __init__(self, entry: dict[str, Any], label: str | None = None) -> None:
        self.name = entry.get("name")
        self.label = label or entry.get("label") or self.name
        self._record = {k: v for k, v in entry.items() if k != "label"}

    def record(self) -> dict[str, Any]:
        return self._record


def _combo(record: dict[str, Any]) -> dict[str, _Entry]:
    labels = record.get("labels") or {}
    return {axis: _Entry(record.get(axis) or {}, labels.get(axis)) for axis in RULE_KEYS}


def suite_order(suite: dict[str, Any], records: Iterable[dict[str, Any]]) -> list[str]:
    """The cell ids of the resolved `suite` in bench.matrix.build_cells order: the product of the axis lists (suite
    order) minus `exclude`, then one cell per `include` rule that matches none of them (found among `records`, as
    such a rule may name an entry that is in no axis list)."""
    lists = {"dataset": [_Entry(e) for e in suite.get("datasets") or []]}
    lists |= {axis: [_Entry(e) for e in suite.get(PLURAL[axis]) or []] for axis in AXES}
    prefix = len(lists["dataset"]) > 1

    def cell_id(combo: dict[str, _Entry]) -> str:
        parts = [combo[axis].label for axis in AXES]
        return "/".join([combo["dataset"].label, *parts] if prefix else parts)

    combos = [dict(zip(RULE_KEYS, values, strict=True)) for values in itertools.product(*lists.values())]
    combos = [c for c in combos if not any(rule_matches(rule, c) for rule in suite.get("exclude") or [])]
    order = list(dict.fromkeys(cell_id(c) for c in combos))
    seen = set(order)
    recorded = [(r["cell_id"], _combo(r)) for r in records]
    for rule in suite.get("include") or []:
        if any(rule_matches(rule, c) for c in combos):
            continue  # it only names values existing cells have: it adds nothing
        for cid, combo in recorded:
            if cid not in seen and rule_matches(rule, combo):
                order.append(cid)
                seen.add(cid)
    return order


def _ordered(
    lines: Iterable[tuple[int, dict[str, Any]]], key: str, position: Any, last_wins_per_shard: bool
) -> list[dict[str, Any]]:
    """One line per `key` value, in the order a single run would have written them.

    Each line's place is the furthest suite position (`position(line)`: that of the cell it names) reached so far in
    its own file, so a shard's lines keep their order and the shards interleave by suite order; a line naming no
    known cell keeps its place. Within a shard the first (or last) line of a key counts; across shards the one that
    comes first."""
    per_shard: dict[tuple[int, Any], tuple[tuple[int, int, int], dict[str, Any]]] = {}
    reached: dict[int, int] = {}
    for n, (shard, line) in enumerate(lines):
        place = position(line)
        reached[shard] = max(reached.get(shard, 0), place) if place is not None else reached.get(shard, 0)
        k = (shard, line.get(key))
        if last_wins_per_shard or k not in per_shard:
            per_shard[k] = ((reached[shard], shard, n), line)
    out: dict[Any, dict[str, Any]] = {}
    for _, line in sorted(per_shard.values(), key=lambda item: item[0]):
        out.setdefault(line.get(key), line)
    return list(out.values())


def _write_lines(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    """A JSON Lines file as bench.jsonl.append writes it, in one write (no file when there is no line, as a run
    with nothing to append leaves none)."""
    if not lines:
        return
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(line, sort_keys=False, default=str) + "\n" for line in lines)
        fh.flush()
        os.fsync(fh.fileno())


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def merged_meta(shards: Sequence[Shard], records: list[dict[str, Any]]) -> dict[str, Any]:
    """run.json of the merged run: shard 1's suite-level keys, recomputed counts and invariants, and `shards`."""
    first = shards[0]
    meta = {k: v for k, v in first.meta.items() if k not in PER_SHARD_KEYS}
    caches = {s.meta.get("cache_dir") for s in shards}
    started = [s.meta["started_at"] for s in shards if s.meta.get("started_at")]
    finished = [s.meta["finished_at"] for s in shards if s.meta.get("finished_at")]
    counts = {status: sum(r.get("status") == status for r in records) for status in ("ok", "skipped", "failed")}
    meta.update(
        schema_version=SCHEMA_VERSION,
        shard=None,
        # one cache when every shard used the same one; else shard 1's (each shard's is under `shards`; every
        # record's artifact.path is absolute)
        cache_dir=first.meta.get("cache_dir") if len(caches) > 1 else caches.pop(),
        environment=first.meta.get("environment"),
        n_cells=len(records),
        started_at=min(started) if started else None,
        resumed_at=[],
        finished_at=max(finished) if finished else None,
        merged_at=_now(),
        status="complete",
        counts=counts,
        invariants=run_invariants(records),
        shards=[
            {
                "dir": str(s.dir.resolve()),
                "shard": [s.index, s.count],
                "n_cells": len(s.records),
                "counts": s.meta.get("counts"),
                "started_at": s.meta.get("started_at"),
                "finished_at": s.meta.get("finished_at"),
                "cache_dir": s.meta.get("cache_dir"),
                "environment": s.meta.get("environment"),
            }
            for s in shards
        ],
    )
    if "gates" in first.meta:  # the suite gates' verdicts are in the records: counted over the whole
        from bench.gates import gate_counts
        from bench.record import CellRecord

        meta["gates"] = gate_counts(CellRecord.from_json(r) for r in records)
    return meta


def merge_shards(shard_dirs: Sequence[Path], out: Path) -> dict[str, Any]:
    """Merge the shards' run directories into `out` (see the module's docstring); returns the merged run.json."""
    from bench.report import render_report

    out = Path(out)
    check_out(out)
    shards = [read_shard(Path(d)) for d in shard_dirs]
    check_shards(shards)
    shards.sort(key=lambda s: s.index)

    all_records = [r for s in shards for r in s.records]
    order = suite_order(shards[0].meta.get("suite") or {}, all_records)
    present = {r["cell_id"] for r in all_records}
    missing = [cid for cid in order if cid not in present]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise _error(
            None,
            f"{len(missing)} cell(s) of the suite in no shard ({shown}): were the shards split by different bench "
            f"versions or devices? (shards: {', '.join(str(s.dir) for s in shards)})",
        )
    position = {cid: i for i, cid in enumerate(order)}
    for r in all_records:  # a cell the rebuilt order does not know goes after the known ones, in shard order
        position.setdefault(r["cell_id"], len(position))
    records = sorted(all_records, key=lambda r: position[r["cell_id"]])

    def by_cell(line: dict[str, Any]) -> int | None:
        return position.get(line.get("cell_id"))

    first_measure: dict[str, int] = {}
    for r in records:
        key = (r.get("stages") or {}).get("measure")
        if key:
            first_measure.setdefault(key, position[r["cell_id"]])

    def lines(name: str) -> list[tuple[int, dict[str, Any]]]:
        return [(s.index, line) for s in shards for line in jsonl.read(s.dir / name) if isinstance(line, dict)]

    stages = _ordered(lines(STAGES_FILE), "key", by_cell, last_wins_per_shard=False)
    timings = _ordered(lines(TIMINGS_FILE), "measure_key", lambda t: first_measure.get(t.get("measure_key")), True)
    correctness = _ordered(lines(CORRECTNESS_FILE), "cell_id", by_cell, last_wins_per_shard=True)
    meta = merged_meta(shards, records)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.merging-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write_lines(tmp / CELLS_FILE, records)
        _write_lines(tmp / STAGES_FILE, stages)
        _write_lines(tmp / TIMINGS_FILE, timings)
        _write_lines(tmp / CORRECTNESS_FILE, correctness)
        jsonl.write_json_atomic(tmp / RUN_FILE, meta)
        render_report([tmp], tmp / REPORT_FILE)
        if out.is_dir():
            out.rmdir()  # empty (check_out): the rename takes its place
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
