"""Reading a run directory back: `bench.load_run(run_dir)` so a user can re-check any number.

run = bench.load_run("results/default-20261121-120000")
run.cells                     # pandas DataFrame, one row per cell record
run.model(cell_id)            # the evaluated model (nn.Module, eval mode, [0, 1] pixels in)
run.artifact(cell_id)         # the deployed artifact's path
run.eval_data(cell_id)        # the (x, y) tensors the cell was scored on
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench import jsonl
from bench.errors import BenchInputError

RUN_FILE, CELLS_FILE, STAGES_FILE = "run.json", "cells.jsonl", "stages.jsonl"


class Run:
    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        self.meta: dict[str, Any] = json.loads((self.dir / RUN_FILE).read_text())
        self.records: list[dict[str, Any]] = jsonl.read(self.dir / CELLS_FILE)
        self.cache_dir = Path(self.meta["cache_dir"])

    @property
    def cells(self) -> pd.DataFrame:
        return pd.DataFrame(self.records)

    @property
    def stages(self) -> pd.DataFrame:
        return pd.DataFrame(jsonl.read(self.dir / STAGES_FILE))

    def record(self, cell_id: str) -> dict[str, Any]:
        for record in self.records:
            if record["cell_id"] == cell_id:
                return record
        raise KeyError(f"no cell '{cell_id}' in {self.dir}; cells: {', '.join(r['cell_id'] for r in self.records)}")

    def _stage_dir(self, cell_id: str, kind: str) -> Path:
        record = self.record(cell_id)
        if record.get("status") != "ok":
            raise ValueError(f"cell '{cell_id}' is {record.get('status')}: it has no {kind} stage")
        return self.cache_dir / kind / record["stages"][kind]

    def model(self, cell_id: str):
        """The evaluated model as an nn.Module in eval mode taking [0, 1] pixels.

        For an eager or TorchScript cell this is the deployed module itself (INT8 included); for ONNX Runtime,
        which runs no nn.Module, it is the artifact's float eager twin (the compressed model before export).
        """
        from bench.runtimes.eager import load_torch_artifact

        fmt = self.record(cell_id)["artifact"]["format"]
        if fmt in ("torch", "torchscript"):
            return load_torch_artifact(self.artifact(cell_id), fmt, "cpu")
        return load_torch_artifact(self._stage_dir(cell_id, "compress") / "model.pt", "torch", "cpu")

    def artifact(self, cell_id: str) -> Path:
        return Path(self.record(cell_id)["artifact"]["path"])

    def eval_data(self, cell_id: str):
        import torch

        data = torch.load(self._stage_dir(cell_id, "data") / "eval.pt", weights_only=True)
        return data["x"], data["y"]

    def per_sample(self, cell_id: str) -> dict[str, Any]:
        """Per-sample clean / robust correctness (bool tensors over the eval split)."""
        import torch

        return torch.load(self._stage_dir(cell_id, "evaluate") / "per_sample.pt", weights_only=True)


def load_run(run_dir: str | Path) -> Run:
    """Open a run directory written by `bench run`."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise BenchInputError(f"not a run directory (no {RUN_FILE})", file=str(run_dir))
    return Run(run_dir)
