"""The content-addressed stage cache: a stage's key hashes its kind, its inputs' keys, its config (a model's
config includes the sha256 of its checkpoint and of a user's source files) and the versions of the code that
matters (the harness, its stage versions, torch, ONNX Runtime, Torch-Pruning...), so a stage whose key is
present is taken from the cache, not run again.

An entry is a folder holding the stage's files and `meta.json`, written last; the folder is built under a
temporary name and renamed into place, so a killed stage leaves no entry that looks complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import __version__
from bench.jsonl import write_json_atomic

# Bump when a stage's output for the same inputs changes (a fix in training, export or measurement).
STAGE_VERSIONS = {"data": 1, "train": 1, "compress": 1, "export": 3, "measure": 3, "evaluate": 6}


# The libraries whose code decides a stage's result: a new version recomputes, never reuses, what it made.
KEYED_LIBRARIES = ("torch", "torchvision", "onnxruntime", "onnx", "torch-pruning", "numpy")


@functools.cache
def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in KEYED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def stage_key(kind: str, config: Any, inputs: list[str]) -> str:
    payload = json.dumps(
        {
            "kind": kind,
            "config": config,
            "inputs": inputs,
            "version": STAGE_VERSIONS[kind],
            "bench": __version__,
            "libraries": library_versions(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class StageCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()  # absolute, so records point at artifacts from any working directory

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def has(self, kind: str, key: str) -> bool:
        return (self.path(kind, key) / "meta.json").is_file()

    def meta(self, kind: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(kind, key) / "meta.json").read_text())

    def staging(self, kind: str, key: str) -> Path:
        tmp = self.root / kind / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, kind: str, key: str, staging: Path, meta: dict[str, Any]) -> Path:
        """Move a built stage into place. Two runs sharing a cache may build one stage at the same time: the first
        to commit wins and the other drops its copy, so both go on with the same entry (the caller re-reads its
        meta.json)."""
        write_json_atomic(staging / "meta.json", meta)
        final = self.path(kind, key)
        for _ in range(5):
            if self.has(kind, key):
                shutil.rmtree(staging, ignore_errors=True)
                return final
            if final.exists():  # an entry without meta.json is a leftover of a killed run
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(staging, final)
                return final
            except OSError:  # another run's entry landed between the check and the rename: look again
                continue
        raise RuntimeError(f"cannot commit {kind} stage {key} into {final}")
