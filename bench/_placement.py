"""Where a scale-out step's processes may run: the workers on some cores with a CPU budget each, everything else on
the others (bench/scale.py `--worker-cpus`, `--worker-share`).

Why: on a 2-core box the load generator (SIPp or the Twilio callers), Kamailio and PostgreSQL share the cores with
the workers, so "2 workers versus 1" there compares one worker with a core of its own against two workers that
share both cores with everything else — a ratio bounded by 2·w₁/(w₂ + o) whatever the gateway does (BENCHMARKS.md,
"Where the two cores go"). A box with more cores would give the generator cores of its own; this emulates one:

* every gateway worker is pinned (sched_setaffinity on each of its threads): worker k to the k-th core of
  `worker_cpus` where there are as many cores as workers, else to all of them; with a share it also gets a CPU
  budget of its own: a cgroup-v1 `cpu` group per worker with `cfs_quota_us = share × cfs_period_us`. The period
  is 10 ms, not the kernel's 100 ms, so a worker that spends its budget waits at most a few ms for the next one
  instead of up to 50 ms (that wait would be turnaround, not CPU);
* this harness (and so every process it starts afterwards: caller processes, SIPp, Kamailio) and PostgreSQL's
  postmaster and its children are pinned to the cores no worker is on — or, where the workers are on every core,
  run anywhere in what the budgets leave. The postmaster's affinity is restored at the end.

Two arrangements on 2 cores, both with the same budget per worker in both shapes, so the 1-vs-2 ratio measures
what a second worker adds, and `capacity / share` is a worker's capacity per core:

* `--worker-cpus 0,1 --worker-share 0.5`: each worker has half of a core of its own (worker 1 on core 0, worker 2
  on core 1), as on a bigger box where each worker has its own core; the generator, Kamailio and PostgreSQL get
  the other halves;
* `--worker-cpus 0 --worker-share 0.5`: the workers share core 0 (half each), everything else has core 1: no
  interference from the generator, but two workers take turns on one core, which a bigger box would not make them.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from bench._cpu import children

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 10_000
POSTMASTER_PID_FILES = sorted(Path("/var/lib/postgresql").glob("*/main/postmaster.pid"))


def threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` onto `cpus` (threads started later inherit their creator's affinity)."""
    for tid in threads(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def postmaster() -> int | None:
    """The local PostgreSQL server's postmaster (first line of its postmaster.pid), if there is one."""
    for f in POSTMASTER_PID_FILES:
        with contextlib.suppress(OSError, ValueError):
            pid = int(f.read_text().split()[0])
            if Path(f"/proc/{pid}").exists():
                return pid
    return None


@dataclass
class Placement:
    worker_cpus: set[int]
    share: float | None = None          # of one core, per worker; None: no budget, only pinned
    rest_cpus: set[int] = field(init=False)
    #: the machine's cores as this harness saw them before `start` pinned it to the rest's
    every: set[int] = field(init=False)
    _groups: list[Path] = field(default_factory=list, init=False)
    _pg: tuple[int, set[int]] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.every = every = os.sched_getaffinity(0)
        # cores no worker is on are the rest's; where the workers have every core (each its own, with a budget),
        # the rest runs anywhere, in what the budgets leave
        self.rest_cpus = (every - self.worker_cpus) or every
        if not self.worker_cpus <= every or (self.rest_cpus == every and self.share is None):
            raise SystemExit(f"--worker-cpus {sorted(self.worker_cpus)}: needs a proper subset of this machine's "
                             f"cores {sorted(every)}, or a --worker-share (the rest needs room)")
        if self.share is not None and not (CGROUP_CPU.is_dir() and os.access(CGROUP_CPU, os.W_OK)):
            raise SystemExit(f"--worker-share needs the cgroup-v1 cpu controller at {CGROUP_CPU}, writable (root): "
                             "each worker's budget is a cgroup of its own")

    def describe(self) -> str:
        budget = (f", {self.share:g} of a core each (cgroup CPU quota, {PERIOD_US // 1000} ms period)"
                  if self.share else "")
        cpus = ",".join(map(str, sorted(self.worker_cpus)))
        where = (f"worker k pinned to CPU k of {cpus}" if len(self.worker_cpus) > 1
                 else f"workers pinned to CPU {cpus}")
        rest = ("anywhere, in what the budgets leave" if self.rest_cpus == self.every
                else f"on CPU {','.join(map(str, sorted(self.rest_cpus)))}")
        return f"{where}{budget}; generator, Kamailio, PostgreSQL and this harness {rest}"

    def start(self) -> None:
        """This harness (and what it starts from now on) and PostgreSQL onto the rest's cores."""
        pin(os.getpid(), self.rest_cpus)
        pm = postmaster()
        if pm is not None and os.geteuid() != 0:
            print("bench: not root, so PostgreSQL's server stays where it is (on every core)", flush=True)
        elif pm is not None:
            self._pg = (pm, os.sched_getaffinity(pm))
            for pid in (pm, *children(pm)):
                pin(pid, self.rest_cpus)

    def workers(self, supervisor: int | None, pids: list[int]) -> None:
        """A fresh node's workers onto their cores, each in a budget group of its own; the supervisor (if any)
        stays with the rest."""
        cpus = sorted(self.worker_cpus)
        for k, pid in enumerate(pids):
            # worker k on core k (round robin) where there are as many cores as workers: one core each
            pin(pid, {cpus[k % len(cpus)]} if len(cpus) >= len(pids) else self.worker_cpus)
            if self.share is None:
                continue
            group = CGROUP_CPU / f"gw-bench-{os.getpid()}-{pid}"
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(int(self.share * PERIOD_US)))
            (group / "cgroup.procs").write_text(str(pid))
            self._groups.append(group)
        if supervisor is not None:
            pin(supervisor, self.rest_cpus)

    def release_groups(self) -> None:
        """Remove the budget groups of a stopped node (a group can be removed once its processes are gone)."""
        for g in self._groups:
            with contextlib.suppress(OSError):
                for pid in (g / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        (CGROUP_CPU / "cgroup.procs").write_text(pid)
                g.rmdir()
        self._groups.clear()

    def stop(self) -> None:
        self.release_groups()
        if self._pg is not None:
            pm, cpus = self._pg
            for pid in (pm, *children(pm)):
                pin(pid, cpus)
            self._pg = None
