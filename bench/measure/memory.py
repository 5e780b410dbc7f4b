"""Peak resident memory, sampled by a background thread (every 5 ms) around a block of work; optionally summed
over the process's children (torchrun workers), whose memory is the recipe's too."""

from __future__ import annotations

import threading
import time

import psutil


class PeakRSS:
    """`with PeakRSS() as peak: work()` then `peak.mb` is the highest RSS seen (MB), `peak.start_mb` the first."""

    def __init__(self, interval_s: float = 0.005, include_children: bool = False) -> None:
        self.interval_s = interval_s
        self.include_children = include_children  # e.g. torchrun workers of a distributed recipe
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.start_mb = 0.0
        self.mb = 0.0

    def _rss_mb(self) -> float:
        rss = self._process.memory_info().rss
        if self.include_children:
            for child in self._process.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:  # a worker that just exited
                    continue
        return rss / 2**20

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.mb = max(self.mb, self._rss_mb())
            time.sleep(self.interval_s if not self.include_children else max(self.interval_s, 0.02))

    def __enter__(self) -> PeakRSS:
        self.start_mb = self.mb = self._rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.mb = max(self.mb, self._rss_mb())
