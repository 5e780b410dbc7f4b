"""Content hashes of files (no torch import: the measurement worker of an ONNX artifact uses this too)."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, modification time): a checkpoint named by many cells is
    read once, and a file overwritten since is read again."""
    stat = os.stat(path)
    return _cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))
