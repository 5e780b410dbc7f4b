"""What makes a run directory one run: `--resume` continues it only with the suite, model files and code it was
started with, so that its records never mix two experiments.

run.json keeps `provenance`: the resolved suite (every default filled in; the file path, description, gates and
time limits left out, since they judge or describe, not measure), the sha256 of each model's checkpoint and
source, the harness version and the versions of the libraries that key the stage cache. A resume compares the
new provenance with the stored one and names the first field that differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import __version__
from bench.cache import library_versions
from bench.errors import BenchInputError

RUN_FILE = "run.json"
# suite keys that do not change a cell's numbers
NOT_MEASURED = ("file", "description", "gate", "limits", "resources", "report")


def read_run_meta(run_dir: Path) -> dict[str, Any]:
    """A run directory's run.json; BenchInputError (exit 2) naming the directory when it is not a run directory."""
    run_file = Path(run_dir) / RUN_FILE
    if not run_file.is_file():
        raise BenchInputError(f"not a run directory (no {RUN_FILE})", file=str(run_dir))
    try:
        meta = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchInputError(f"unreadable {RUN_FILE}: {exc}", file=str(run_dir)) from None
    if not isinstance(meta, dict):
        raise BenchInputError(f"{RUN_FILE} is not a JSON object", file=str(run_dir))
    return meta


def provenance(resolved_suite: dict[str, Any], model_files: dict[str, dict[str, str]]) -> dict[str, Any]:
    """What a run's records depend on, JSON-ready (tuples become lists, as they will be in run.json)."""
    suite = {k: v for k, v in resolved_suite.items() if k not in NOT_MEASURED}
    data = {"suite": suite, "model_files": model_files, "bench": __version__, "libraries": library_versions()}
    return json.loads(json.dumps(data, default=str))


def first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first (path, old value, new value) where two JSON values differ, in key order; None when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            found = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if old == new else (path, old, new)


def check_resumable(run_dir: Path, current: dict[str, Any], shard: list[int] | None) -> dict[str, Any]:
    """The stored run.json of `run_dir` if `--resume` may continue it with `current` provenance and `shard`;
    else a BenchInputError naming the first difference (the caller has written nothing yet)."""
    run_file = run_dir / RUN_FILE
    try:
        previous = json.loads(run_file.read_text())
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict) or "provenance" not in previous:
        why = "has no run.json" if not run_file.exists() else "has a run.json this harness did not write or cannot read"
        raise BenchInputError(f"{run_dir} is not a run directory to resume ({why})", field="--resume")
    found = first_difference(previous["provenance"], current)
    if found is None and previous.get("shard") != shard:
        found = ("--shard", previous.get("shard"), shard)
    if found:
        field, old, new = found
        raise BenchInputError(
            f"cannot resume {run_dir}: {field} is {_short(old)} in that run and {_short(new)} now; "
            "run the changed suite into another --out",
            field="--resume",
        )
    return previous


def _short(value: Any, limit: int = 80) -> str:
    text = "absent" if value is None else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
