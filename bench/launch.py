"""The one torchrun launcher of the distributed recipes, and the entry point its ranks run.

The recipe side, `run_workers`, writes the model (pickled whole, `torch.save(model)`), the data blob and a JSON spec
into a temporary folder, runs `python -m torch.distributed.run --standalone --nproc_per_node N -m bench.launch
spec.json` as a subprocess and loads the state_dict rank 0 saves back into the model. The spec names the worker
function by import path (`"worker": "package.module:function"`), so a new distributed recipe brings its own worker
and needs no edit here. The rank side: `main` imports that function and calls it with the spec; the worker joins
the group (`process_group`), reads its inputs (`load_worker_inputs`) and on rank 0 writes its outputs
(`write_outputs`). torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous in the environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bench.config import parse_config
from bench.userimport import subprocess_env

LOG_TAIL_CHARS = 4000  # how much of the workers' output a failure message quotes
# A launch that failed before any rank trained: the rendezvous port was taken between torchrun picking it and
# binding it (other local services, a Ray node among them, bind ephemeral ports too). Such a launch is tried again
# once; a rank's own error is never retried.
LAUNCH_RACE = re.compile(r"EADDRINUSE|address already in use|failed to listen on any local network address", re.I)
RANK_ERROR = re.compile(r"^\[rank\d+\]:\s*((?:\w+\.)*\w*(?:Error|Exception|Interrupt)\b.*)$")
PG_TIMEOUT_S = 1800  # process-group timeout of a collective, unless the spec sets `pg_timeout_s`

Worker = Callable[[dict[str, Any]], None]

# --- the launching process -----------------------------------------------------------------------------------------


def worker_env(nproc: int) -> dict[str, str]:
    """The ranks' environment: ours, a PYTHONPATH that reaches the user modules (the ranks unpickle the model),
    and the cores split between the ranks unless the caller chose (torchrun would otherwise force 1 and warn)."""
    env = subprocess_env()
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def torchrun(nproc: int, spec: dict[str, Any], workdir: Path, *, what: str, timeout_s: float | None = None) -> float:
    """Run `spec["worker"]` on `nproc` local ranks through torchrun; return the wall seconds.

    The spec goes to `workdir/spec.json`; the workers' output to `workdir/torchrun.log`, whose first rank error and
    tail a failure (RuntimeError) quotes. On a timeout or an interrupt the launcher's whole process group is
    stopped. A launch that lost its rendezvous port to another process (LAUNCH_RACE) is started once more.
    """
    spec_path = (workdir / "spec.json").resolve()  # absolute: the ranks start in workdir
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += ["-m", "bench.launch", str(spec_path)]
    log_path = workdir / "torchrun.log"
    start = time.perf_counter()
    for attempt in (1, 2):
        code = _launch(cmd, workdir, log_path, nproc, timeout_s)
        log = log_path.read_text(errors="replace")
        if code == 0 or code is None or attempt == 2 or not LAUNCH_RACE.search(log):
            break
    seconds = time.perf_counter() - start
    if code != 0:
        why = f"timed out after {timeout_s:g} s" if code is None else f"exited with {code}"
        raise RuntimeError(
            f"{what}: torchrun ({nproc} processes) {why}: {first_rank_error(log)}; its output ends:\n"
            f"{log[-LOG_TAIL_CHARS:]}"
        )
    return seconds


def _launch(cmd: list[str], workdir: Path, log_path: Path, nproc: int, timeout_s: float | None) -> int | None:
    """One torchrun launch, its output to `log_path`: its exit code, or None when it ran past `timeout_s`."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            # started in the work folder: `-m` puts the working directory first on the ranks' import path, and a
            # folder named `bench` where the user stands must not shadow the harness
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_env(nproc),
            start_new_session=True,
            cwd=workdir,
        )
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.poll() is None:  # timed out or interrupted: stop the launcher and its workers
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def first_rank_error(log: str) -> str:
    """The line that says why the launch failed, for the one-line summary of a failed cell: the first exception a
    rank printed (torchrun prefixes a rank's lines with `[rankN]:`), else the log's last line of words (torchrun's
    own report ends in a rule of `=`), else "no output"."""
    for line in log.splitlines():
        match = RANK_ERROR.match(line.strip())
        if match:
            return match.group(1)
    lines = [line.strip() for line in log.splitlines() if line.strip().strip("=-")]
    return lines[-1] if lines else "no output"


def run_workers(
    worker: str,
    nproc: int,
    model: nn.Module,
    blob: dict[str, Any],
    cfg: Any,
    *,
    seed: int,
    device: str,
    backend: str,
    what: str,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Train `model` (moved to the CPU) on `nproc` torchrun ranks running `worker` ("package.module:function").

    The ranks get `cfg` (a config dataclass), the model, `blob` (tensors and plain values, loaded with
    `weights_only`), the seed, the device and the process-group backend; rank 0's state_dict is loaded into `model`
    and its JSON result returned.
    """
    with tempfile.TemporaryDirectory(prefix=f"bench-{what}-") as tmp:
        work = Path(tmp)
        spec = {
            "worker": worker,
            "config": dataclasses.asdict(cfg),
            "seed": seed,
            "device": device,
            "backend": backend,
            "model": str(work / "model.pt"),
            "data": str(work / "data.pt"),
            "state": str(work / "state.pt"),
            "result": str(work / "result.json"),
        }
        torch.save(model.cpu(), spec["model"])
        torch.save(blob, spec["data"])
        torchrun(nproc, spec, work, what=what, timeout_s=timeout_s)
        model.load_state_dict(torch.load(spec["state"], map_location="cpu", weights_only=True))
        return json.loads(Path(spec["result"]).read_text())


# --- a rank --------------------------------------------------------------------------------------------------------


def rank_device(device: str, local_rank: int) -> torch.device:
    """The device of one rank: the CPU, or GPU (index of `device` + local rank) modulo the GPU count."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    return torch.device("cuda", ((dev.index or 0) + local_rank) % max(1, torch.cuda.device_count()))


def init_process_group(spec: dict[str, Any]) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device) after joining the group torchrun set up in the environment."""
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = rank_device(spec["device"], local_rank)
    kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=spec.get("pg_timeout_s", PG_TIMEOUT_S))}
    if spec["backend"] == "nccl":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(spec["backend"], **kwargs)
    return rank, world, device


@contextlib.contextmanager
def process_group(spec: dict[str, Any]) -> Iterator[tuple[int, int, torch.device]]:
    """`init_process_group` for the block; on success every rank waits at a barrier (rank 0 has written its
    outputs) before the group is destroyed."""
    rank, world, device = init_process_group(spec)
    try:
        yield rank, world, device
        dist.barrier()
    finally:
        dist.destroy_process_group()


def load_worker_inputs(spec: dict[str, Any], config_cls: type) -> tuple[Any, nn.Module, dict[str, Any]]:
    """What a rank reads from the launcher's spec: its config, the model and the data blob."""
    cfg = parse_config(config_cls, spec["config"])
    model: nn.Module = torch.load(spec["model"], map_location="cpu", weights_only=False)
    blob = torch.load(spec["data"], map_location="cpu", weights_only=True)
    return cfg, model, blob


def write_outputs(spec: dict[str, Any], model: nn.Module, result: dict[str, Any]) -> None:
    """Rank 0's part: the trained state_dict and the JSON result that `run_workers` reads back."""
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, spec["state"])
    Path(spec["result"]).write_text(json.dumps(result))


def load_worker(path: str) -> Worker:
    """ "package.module:function" -> the function."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"worker must be 'package.module:function', got {path!r}")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.launch SPEC.json`: run the spec's worker in this rank."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.launch SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    load_worker(spec["worker"])(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
