"""Peak memory of one block of work (a tuning trial), as resident memory (RSS) above its start.

Why RSS and not ``tracemalloc``: tracemalloc sees numpy's allocations but not PyTorch's CPU
tensors nor native libraries (OpenBLAS, the dense CRF), so it would miss most of a deep-feature
trial. ``ru_maxrss`` cannot be reset between trials. So a thread samples the process's RSS every
few milliseconds; the figure is the largest RSS seen minus the RSS at the start. Spikes shorter
than the sampling interval can be missed, and memory the allocator keeps from an earlier trial
is reused without showing up again, so the figure is a lower bound of what a fresh process
would need.
"""

from __future__ import annotations

import os
import threading
from typing import Callable


def _rss_reader() -> Callable[[], int]:
    """A function returning this process's resident bytes (Linux /proc; psutil elsewhere)."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    if os.path.exists("/proc/self/statm"):
        def read() -> int:
            with open("/proc/self/statm", "rb") as fh:
                return int(fh.read().split()[1]) * page
        return read
    import psutil

    proc = psutil.Process()
    return lambda: int(proc.memory_info().rss)


class PeakMemory:
    """``with PeakMemory() as m: work()`` then ``m.peak_delta_bytes`` (sampled RSS, see module doc)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = float(interval_s)
        self._read = _rss_reader()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_bytes = 0
        self.peak_bytes = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, self._read())

    def __enter__(self) -> "PeakMemory":
        self.start_bytes = self.peak_bytes = self._read()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="hrdv2-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._read())

    @property
    def peak_delta_bytes(self) -> int:
        return max(self.peak_bytes - self.start_bytes, 0)
