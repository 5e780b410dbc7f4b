"""Peak resident memory, sampled by a background thread (every 5 ms) around a block of work."""

from __future__ import annotations

import threading
import time

import psutil


class PeakRSS:
    """`with PeakRSS() as peak: work()` then `peak.mb` is the highest RSS seen (MB), `peak.start_mb` the first."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.start_mb = 0.0
        self.mb = 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.mb = max(self.mb, self._process.memory_info().rss / 2**20)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.start_mb = self.mb = self._process.memory_info().rss / 2**20
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.mb = max(self.mb, self._process.memory_info().rss / 2**20)
