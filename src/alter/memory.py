"""Resident memory of this process: what a run summary records as its peak.

A run's peak is sampled (``VmRSS`` every ``interval`` seconds by a daemon thread) rather than read
from the kernel's high-water mark, because the only way to scope ``VmHWM`` to a run is to reset
it (``/proc/self/clear_refs``), which would also hide an earlier peak from the caller's own
measurement (``/usr/bin/time -v`` reads the same counter). A sample can miss a spike shorter than
the interval; the process's high-water mark since it started is recorded next to it as the upper
bound. Outside Linux (no ``/proc``) only the process's peak is available (``getrusage``).

    with PeakRSS() as mem:
        train()
    summary.update(mem.record())  # {"peak_rss_mb": ..., "process_peak_rss_mb": ...}
"""

from __future__ import annotations

import resource
import sys
import threading
from pathlib import Path

STATUS = Path("/proc/self/status")


def status_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` (or any kB field of /proc/self/status) in MB; None without /proc."""
    try:
        with STATUS.open() as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def process_peak_mb() -> float:
    """This process's peak RSS since it started, in MB.

    ``VmHWM`` where there is /proc: Linux carries ``ru_maxrss`` over ``exec`` from the forking
    parent, so a child started by a large process would report the parent's peak.
    """
    hwm = status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else kB


class PeakRSS:
    """Peak resident memory over a ``with`` block, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02):
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = status_mb("VmRSS")
        if rss is not None and (self.peak_mb is None or rss > self.peak_mb):
            self.peak_mb = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRSS:
        self._sample()
        if self.peak_mb is not None:  # /proc is there: sample in the background
            self._thread = threading.Thread(target=self._run, name="alter-peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def record(self) -> dict[str, float | None]:
        """What a run summary stores (MB; ``peak_rss_mb`` is None where /proc is missing)."""
        # The kernel updates VmRSS and VmHWM from per-thread counters in batches, so a sample can
        # exceed the high-water mark read a moment later by a few hundred kB.
        process = max(process_peak_mb(), self.peak_mb or 0.0)
        return {
            "peak_rss_mb": None if self.peak_mb is None else round(self.peak_mb, 1),
            "process_peak_rss_mb": round(process, 1),
        }
