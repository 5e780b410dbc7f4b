"""A warm start for measurement processes: a zygote imports the runtime once (PyTorch, or ONNX Runtime) and forks one
child per artifact, so each artifact still gets a process of its own but not the seconds of `import torch`.

Run as `python -m bench.measure.zygote MODULE...` with the environment the children need (thread variables,
PYTHONPATH). It imports the modules, then reads requests on stdin, one JSON line each
(`{"spec": ..., "out": ..., "log": ..., "cwd": ...}`), and for each forks a child that runs
`bench.measure.worker.main([spec, out])` with its stdout and stderr in `log` and `cwd` as its working directory. It
answers two lines on stdout: `{"pid": PID}` when the child has started (the parent kills that pid on a timeout) and
`{"pid": PID, "exit": CODE}` when it has ended (a negative code: killed by that signal). It exits when stdin closes.

Forking is safe only from a process with no other threads holding locks, so the zygote imports and runs nothing
else: no PyTorch operation (its intra-op thread pool would start), no CUDA call (a child could not use CUDA after a
parent had initialised it), no ONNX Runtime session. Each child brings its runtime up itself, setting its own
thread count, as a fresh process would (the worker's `warm_runtime`). With OMP_NUM_THREADS / OPENBLAS_NUM_THREADS
set as the parent sets them, numpy's BLAS starts no thread either.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any

# What to import before forking, by the module of an artifact's opener: the runtime that module imports when it
# opens an artifact. An opener of another module gets the worker's own modules only (numpy, psutil) and imports the
# rest in the child, like a fresh process: importing a plugin's module here could start threads.
PRELOAD = {
    "bench.runtimes.torch_session": ("torch", "bench.runtimes.torch_session"),
    "bench.runtimes.ort_session": ("onnxruntime", "bench.runtimes.ort_session"),
}
ALWAYS = ("bench.measure.worker",)


def preload_for(opener: str) -> tuple[str, ...]:
    """The modules a zygote for artifacts opened by `opener` (`module:function`) imports before it forks."""
    return ALWAYS + PRELOAD.get(opener.partition(":")[0], ())


def _child(request: dict[str, Any]) -> int:
    """In the forked child: stdio to the log, the request's working directory, then the worker."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.chdir(request["cwd"])
    from bench.measure import worker

    try:
        return worker.main([request["spec"], request["out"]])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1


def serve(modules: list[str]) -> int:
    for name in modules:
        importlib.import_module(name)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # never: nothing here runs a CUDA call
        raise RuntimeError("CUDA was initialised in the measurement zygote; its children could not use it")
    out = sys.stdout
    out.write(json.dumps({"ready": modules}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out.write(json.dumps({"pid": pid, "exit": code}) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
