"""A time limit on a block of code in the main thread (`limits.cell_timeout_s`): the local executor's cells and
the Ray executor's tasks."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class CellTimeout(Exception):
    """A cell ran past `limits.cell_timeout_s`."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise CellTimeout in this (main) thread after `seconds`; a subprocess being waited for is killed by the
    wait's own cleanup (subprocess.run, the torchrun launcher), so a cell over its limit stops, whatever it runs."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CellTimeout(f"timeout after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
