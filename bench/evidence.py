"""What a run keeps beyond its records so that two run directories compare anywhere, without any cache:

- `timings.jsonl`: one line per measured artifact (keyed by its measure stage's cache key, which the cells of that
  artifact carry in `stages.measure`): per batch size, the raw latency samples (ms) of every measurement process
  and the reference workload's time in each process (the machine's speed at that moment);
- `correctness.jsonl`: one line per evaluated cell: the eval samples' fingerprint, n, and per-sample clean and
  robust correctness as hex bit strings (300 samples take 75 characters).
Both are appended and flushed a line at a time, like cells.jsonl.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from bench import jsonl

TIMINGS_FILE, CORRECTNESS_FILE = "timings.jsonl", "correctness.jsonl"


def pack_bits(flags: Any) -> str:
    """A bool vector as a hex string (numpy's packbits, big-endian bit order)."""
    return np.packbits(np.asarray(flags, dtype=bool)).tobytes().hex()


def unpack_bits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


@dataclasses.dataclass
class Correctness:
    cell_id: str
    eval_sha256: str  # fingerprint of the eval split (x and y): equal fingerprints mean the same samples
    clean: np.ndarray
    robust: np.ndarray | None

    def to_json(self) -> dict[str, Any]:
        return {
            "cell_id": self.cell_id,
            "eval_sha256": self.eval_sha256,
            "n": len(self.clean),
            "clean": pack_bits(self.clean),
            "robust": None if self.robust is None else pack_bits(self.robust),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Correctness:
        n = int(data["n"])
        robust = data.get("robust")
        return cls(
            data["cell_id"],
            data["eval_sha256"],
            unpack_bits(data["clean"], n),
            None if robust is None else unpack_bits(robust, n),
        )


@dataclasses.dataclass
class Timings:
    """Raw latency samples of one artifact: batch size -> one list of samples (ms) per measurement process."""

    measure_key: str
    processes: dict[str, list[list[float]]]
    reference_ms: list[float]  # the reference workload's p50 in each process, in the order of `processes`
    fresh: bool = True  # measured in this run (False: reused from the stage cache)

    def process_medians(self, batch: str) -> list[float]:
        return [float(np.median(p)) for p in self.processes.get(batch, []) if p]

    def to_json(self) -> dict[str, Any]:
        rounded = {b: [[round(v, 6) for v in p] for p in ps] for b, ps in self.processes.items()}
        return {
            "measure_key": self.measure_key,
            "processes": rounded,
            "reference_ms": [round(v, 6) for v in self.reference_ms],
            "fresh": self.fresh,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timings:
        return cls(data["measure_key"], data["processes"], data.get("reference_ms") or [], data.get("fresh", True))


def append_correctness(run_dir: Path, item: Correctness) -> None:
    jsonl.append(run_dir / CORRECTNESS_FILE, item.to_json(), sync=False)  # the runner syncs once per group


def append_timings(run_dir: Path, item: Timings) -> None:
    jsonl.append(run_dir / TIMINGS_FILE, item.to_json(), sync=False)  # the runner syncs once per group


def read_correctness(run_dir: Path) -> dict[str, Correctness]:
    """cell_id -> its correctness (the last line wins, as a resumed run may repeat one)."""
    return {d["cell_id"]: Correctness.from_json(d) for d in jsonl.read(Path(run_dir) / CORRECTNESS_FILE)}


def read_timings(run_dir: Path) -> dict[str, Timings]:
    """measure stage key -> the artifact's timings (the last line wins)."""
    return {d["measure_key"]: Timings.from_json(d) for d in jsonl.read(Path(run_dir) / TIMINGS_FILE)}
