"""CPU time and resident memory of a process from /proc (Linux), sampled during a load run."""
from __future__ import annotations

import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime (fields 14, 15 of proc(5))


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        return None
    return None


@dataclass
class ProcessSampler:
    """Tracks CPU used and peak RSS of `pid` between start() and the last sample()."""

    pid: int
    cpu_start: float = 0.0
    cpu_last: float = 0.0
    rss_peak: int = 0
    samples: int = 0

    def start(self) -> None:
        self.cpu_start = self.cpu_last = cpu_seconds(self.pid) or 0.0
        self.sample()

    def sample(self) -> None:
        cpu = cpu_seconds(self.pid)
        if cpu is not None:
            self.cpu_last = cpu
        rss = rss_bytes(self.pid)
        if rss is not None:
            self.rss_peak = max(self.rss_peak, rss)
        self.samples += 1

    @property
    def cpu_used(self) -> float:
        return self.cpu_last - self.cpu_start
