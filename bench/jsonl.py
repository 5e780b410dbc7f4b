"""Append-only JSON Lines files that survive a killed process.

Each record is one line, written and flushed (and fsynced, per line or per batch) at once, so a run killed part
way loses at most the line in flight; a reader ignores a torn last line, and `repair` cuts it off before appending
resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def append(path: Path, record: dict[str, Any], *, sync: bool = True) -> None:
    """Append one line. `sync=False` leaves it to the OS (it survives a killed process, not a lost machine): for
    a file whose writer calls `fsync` itself once per batch."""
    append_many(path, [record], sync=sync)


def append_many(path: Path, records: list[dict[str, Any]], *, sync: bool = True) -> None:
    """Append several lines in one write (and one fsync): a group's records land together."""
    text = "".join(json.dumps(record, sort_keys=False, default=str) + "\n" for record in records)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def fsync(path: Path) -> None:
    """Make what was appended to `path` without sync durable."""
    if path.exists():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read(path: Path) -> list[dict[str, Any]]:
    """All complete records of `path` (a missing file is empty; a torn last line is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def repair(path: Path) -> int:
    """Cut a torn last line (a write killed mid-line); return the number of bytes removed."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = len(data) if data.endswith(b"\n") or not data else data.rfind(b"\n") + 1
    if keep < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    return len(data) - keep


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
