"""A cache entry as one value that can travel between machines (through Ray's object store), checked on arrival.

A `Bundle` holds a stage's files, each with its sha256, and its meta.json; `install` verifies every file before it
commits the entry to a StageCache through the cache's own staging and first-wins commit, so a bundle that arrives
twice, or one a local run committed meanwhile, leaves one complete entry. A file that does not match its hash
raises BundleCorrupt and commits nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from bench.cache import StageCache


class BundleCorrupt(RuntimeError):
    """A stage's file arrived with other content than its sender hashed."""


@dataclasses.dataclass
class Bundle:
    kind: str
    key: str
    meta: dict[str, Any]
    files: dict[str, bytes]  # path relative to the entry -> content
    sha256: dict[str, str]  # path relative to the entry -> hex digest, computed where the entry was made
    log: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # stages.jsonl lines of the task that built it
    node: str | None = None  # the machine that built it


def pack(cache: StageCache, kind: str, key: str) -> Bundle:
    """The committed entry (kind, key) of `cache` as a Bundle."""
    root = cache.path(kind, key)
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "meta.json":
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    digests = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
    return Bundle(kind, key, cache.meta(kind, key), files, digests)


def install(cache: StageCache, bundle: Bundle) -> Path:
    """Commit `bundle` to `cache` (nothing to do where the entry is already there); its path in `cache`."""
    if cache.has(bundle.kind, bundle.key):
        return cache.path(bundle.kind, bundle.key)
    for name, content in bundle.files.items():
        if hashlib.sha256(content).hexdigest() != bundle.sha256.get(name):
            raise BundleCorrupt(f"{bundle.kind} stage {bundle.key}: {name} does not match the sha256 it was sent with")
    staging = cache.staging(bundle.kind, bundle.key)
    for name, content in bundle.files.items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return cache.commit(bundle.kind, bundle.key, staging, json.loads(json.dumps(bundle.meta)))
