"""Reading a run directory back: `bench.load_run(run_dir)` so a user can re-check any number.

run = bench.load_run("results/default-20261121-120000")
run.records                   # list of bench.record.CellRecord, in the order the cells ran
run.cells                     # pandas DataFrame, one row per cell record (its JSON form)
run.record(cell_id)           # one CellRecord
run.model(cell_id)            # the evaluated model (nn.Module, eval mode, [0, 1] pixels in)
run.artifact(cell_id)         # the deployed artifact's path
run.eval_data(cell_id)        # the (x, y) tensors the cell was scored on
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bench import jsonl
from bench.errors import BenchInputError
from bench.record import SCHEMA_VERSION, ArtifactInfo, CellRecord, read_records

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

RUN_FILE, CELLS_FILE, STAGES_FILE = "run.json", "cells.jsonl", "stages.jsonl"


class Run:
    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        self.meta: dict[str, Any] = json.loads((self.dir / RUN_FILE).read_text())
        if self.schema_version > SCHEMA_VERSION:
            log.warning(
                "%s was written by a newer bench (schema %d > %d)", self.dir, self.schema_version, SCHEMA_VERSION
            )
        self.records: list[CellRecord] = read_records(self.dir / CELLS_FILE)
        self.cache_dir = Path(self.meta["cache_dir"])
        shard_caches = [Path(s["cache_dir"]) for s in self.meta.get("shards") or [] if s.get("cache_dir")]
        self.cache_dirs = list(dict.fromkeys([self.cache_dir, *shard_caches]))

    @property
    def schema_version(self) -> int:
        """The run directory's format version; 1 for a run written before run.json recorded one."""
        return int(self.meta.get("schema_version", 1))

    @property
    def cells(self) -> pd.DataFrame:
        return pd.DataFrame([record.to_json() for record in self.records])

    @property
    def stages(self) -> pd.DataFrame:
        return pd.DataFrame(jsonl.read(self.dir / STAGES_FILE))

    def record(self, cell_id: str) -> CellRecord:
        for record in self.records:
            if record.cell_id == cell_id:
                return record
        ids = ", ".join(str(r.cell_id) for r in self.records)
        raise KeyError(f"no cell '{cell_id}' in {self.dir}; cells: {ids}")

    def stage_dir(self, cell_id: str, kind: str) -> Path:
        """The cache folder of one of an ok cell's stages (in the cache of the shard that ran it, for a merge)."""
        record = self.record(cell_id)
        if record.status != "ok" or not record.stages:
            raise ValueError(f"cell '{cell_id}' is {record.status}: it has no {kind} stage")
        # a merged run's shards may each have had their own cache: the first that holds the stage
        for cache in self.cache_dirs:
            if (cache / kind / record.stages[kind] / "meta.json").is_file():
                return cache / kind / record.stages[kind]
        return self.cache_dir / kind / record.stages[kind]

    def _artifact_info(self, cell_id: str) -> ArtifactInfo:
        artifact = self.record(cell_id).artifact
        if artifact is None or artifact.path is None:
            raise ValueError(f"cell '{cell_id}' has no artifact")
        return artifact

    def model(self, cell_id: str) -> nn.Module:
        """The evaluated model as an nn.Module in eval mode taking [0, 1] pixels.

        The artifact is opened the way its runtime said at export (`Exported.session`); when that session holds a
        module (eager and TorchScript artifacts, INT8 included) this is the deployed module itself; otherwise (ONNX
        Runtime runs no nn.Module) it is the artifact's float eager twin (the compressed model before export).
        """
        import warnings

        import torch

        from bench.measure.sessions import open_session

        info = self._artifact_info(cell_id)
        export_meta = json.loads((self.stage_dir(cell_id, "export") / "meta.json").read_text())
        opener = export_meta["exported"].get("session")  # absent in caches written before openers were named
        if opener:
            session = open_session(opener, self.artifact(cell_id), "cpu", sha256=info.sha256)
            if session.eager_module is not None:
                return session.eager_module.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.load's TypedStorage notice on pickled modules
            twin = torch.load(self.stage_dir(cell_id, "compress") / "model.pt", map_location="cpu", weights_only=False)
        return twin.eval()

    def artifact(self, cell_id: str) -> Path:
        return Path(str(self._artifact_info(cell_id).path))

    def eval_data(self, cell_id: str):
        import torch

        data = torch.load(self.stage_dir(cell_id, "data") / "eval.pt", weights_only=True)
        return data["x"], data["y"]

    def per_sample(self, cell_id: str) -> dict[str, Any]:
        """Per-sample clean / robust correctness (bool tensors over the eval split)."""
        import torch

        return torch.load(self.stage_dir(cell_id, "evaluate") / "per_sample.pt", weights_only=True)


def load_run(run_dir: str | Path) -> Run:
    """Open a run directory written by `bench run`."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise BenchInputError(f"not a run directory (no {RUN_FILE})", file=str(run_dir))
    return Run(run_dir)
