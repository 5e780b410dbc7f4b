"""Entry point of the torchrun ranks of `ddp` and `fedavg`: `python -m bench.recipes.dist_worker SPEC.json`.

The recipe that launches torchrun writes the spec (what to run, where the model, data and outputs are); torchrun
sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous in the environment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.recipes.dist_worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    if spec["kind"] == "ddp":
        from bench.recipes.distributed import ddp_worker

        ddp_worker(spec)
    elif spec["kind"] == "fedavg":
        from bench.recipes.federated import fedavg_worker

        fedavg_worker(spec)
    else:
        print(f"dist_worker: unknown kind {spec['kind']!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
