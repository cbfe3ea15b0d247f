"""Where the cores went during a benchmark step: CPU seconds per component, read from /proc.

A scale-out figure means little without it: on a 2-core box the load generator (SIPp, the Python callers),
Kamailio and PostgreSQL's backends compete with the gateway's workers for the same cores, so "2 workers are not
twice 1 worker" may be the generator's fault. `CpuAccount` samples every process of every component twice a
second (processes come and go: PostgreSQL backends, SIPp, generator processes) and sums, per process, the CPU it
used inside the window: a process already running when the window opened counts from its first sample, one
started inside the window from zero. The rest of the machine (other users of the box) is the machine's busy time
from /proc/stat minus everything counted here.

    acct = CpuAccount({"workers": node.pids, "kamailio": lambda: session_pids(kam.pid)})
    await acct.start(); ...; shares = await acct.stop()      # {"workers": 1.23, ..., "rest of box": 0.4} in s
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from gateway.procstat import cpu_seconds

TICK = os.sysconf("SC_CLK_TCK")
REST = "rest of box"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3… of /proc/PID/stat (after the command name, which may contain spaces)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def started_at(pid: int) -> float | None:
    """When `pid` started, in seconds since boot (field 22 of proc(5))."""
    f = _stat_fields(pid)
    return int(f[19]) / TICK if f else None


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (every core; /proc/stat minus idle and iowait)."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in parts[:8]]            # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


def session_pids(sid: int) -> list[int]:
    """Every process of session `sid` (a program started with start_new_session=True and all it forked)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            f = _stat_fields(int(entry.name))
            if f is not None and int(f[3]) == sid:
                out.append(int(entry.name))
    return out


def children(pid: int, name: str | None = None) -> list[int]:
    """Direct children of `pid` (optionally only those whose command is `name`)."""
    kids: list[int] = []
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(f"{task.path}/children") as f:
                kids += [int(p) for p in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []
    if name is None:
        return kids
    out = []
    for k in kids:
        try:
            if Path(f"/proc/{k}/comm").read_text().strip() == name:
                out.append(k)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


class CpuAccount:
    """CPU seconds per component between start() and stop(); a component is a name and a function listing its
    process ids (asked at every sample), or an async one (e.g. PostgreSQL backends from pg_stat_activity)."""

    def __init__(self, components: dict[str, Callable[[], Iterable[int]]],
                 async_components: dict[str, Callable[[], object]] | None = None, interval: float = 0.5) -> None:
        self.components = components
        self.async_components = async_components or {}
        self.interval = interval
        self._first: dict[tuple[str, int], float] = {}
        self._last: dict[tuple[str, int], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._exact: dict[str, float] = {}
        self._t0 = self._busy0 = self._up0 = 0.0
        self.wall = 0.0

    async def _pids(self) -> dict[str, list[int]]:
        got = {name: list(find()) for name, find in self.components.items()}
        for name, afind in self.async_components.items():
            try:
                got[name] = list(await afind())            # type: ignore[misc]
            except Exception:                                # a sample missed is a sample missed, not a failure
                got.setdefault(name, [])
        return got

    async def sample(self) -> None:
        for name, pids in (await self._pids()).items():
            for pid in pids:
                cpu = cpu_seconds(pid)
                if cpu is None:
                    continue
                key = (name, pid)
                if key not in self._first:
                    born = started_at(pid)
                    # started inside the window: all its CPU is the window's
                    self._first[key] = 0.0 if born is not None and born >= self._up0 else cpu
                self._last[key] = cpu

    def exact(self, name: str, seconds: float) -> None:
        """Use `seconds` for component `name` instead of its samples: e.g. a child process's CPU from
        getrusage(RUSAGE_CHILDREN) once it has been reaped (its last samples may miss its last half second)."""
        self._exact[name] = seconds

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.sample()

    async def start(self) -> None:
        self._up0, self._busy0, self._t0 = uptime(), busy_seconds(), time.monotonic()
        self._first.clear()
        self._last.clear()
        self._exact.clear()
        await self.sample()
        self._task = asyncio.create_task(self._loop())

    @property
    def running(self) -> bool:
        """Between start() and stop()."""
        return self._task is not None

    async def stop(self) -> dict[str, float]:
        """CPU seconds per component (and REST: the machine's busy time nobody here used) since start()."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.sample()
        self.wall = time.monotonic() - self._t0
        used = {name: 0.0 for name in [*self.components, *self.async_components]}
        for (name, pid), last in self._last.items():
            used[name] += max(0.0, last - self._first[(name, pid)])
        used.update(self._exact)
        used[REST] = max(0.0, busy_seconds() - self._busy0 - sum(used.values()))
        return used

    def percent(self, used: dict[str, float]) -> dict[str, float]:
        """The same as % of one core over the window."""
        return {k: 100 * v / self.wall for k, v in used.items()} if self.wall else {}


class PgBackends:
    """The process ids of PostgreSQL's backends serving one database (this reader's own excluded), for
    CpuAccount: the server runs on this machine in the benchmarks, so its backends' CPU is read from /proc."""

    def __init__(self, url: str) -> None:
        self.dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        self._conn: object | None = None

    async def __call__(self) -> list[int]:
        import asyncpg

        if self._conn is None:
            self._conn = await asyncpg.connect(self.dsn)
        rows = await self._conn.fetch(                                  # type: ignore[attr-defined]
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return [r["pid"] for r in rows]

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()                                    # type: ignore[attr-defined]
            self._conn = None
