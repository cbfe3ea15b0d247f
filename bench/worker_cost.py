"""Why two workers cost more CPU per call than one: each worker's counters per call at the same total call rate.

`bench/scale.py cps` gives the workers' CPU per call summed; this splits it per process and says what it was
spent on. One node (`gateway serve`, then `gateway serve --workers 2`) behind the real Kamailio of
`deploy/kamailio/kamailio.cfg`, SIPp `uac` zero-length calls at the same total rate for both shapes (so each of two
workers carries half), rounds alternated, and for every gateway process (the supervisor too):

- user and system CPU (ms per call: per call *it* handled, i.e. total calls / workers),
- voluntary context switches (each one is the event loop going to sleep in epoll and being woken again: the
  loop's wake-ups) and involuntary ones (preempted),
- system calls (`perf stat -e raw_syscalls:sys_enter`; left out when perf cannot attach),

and for PostgreSQL: transactions committed per call (pg_stat_database) and its backends' CPU per call; Kamailio's
processes' CPU per call.
`--spin` first runs a CPU-only Python loop on one core alone and then on both cores at once: if the same work
costs more CPU time when both cores are busy, part of w₂ > w₁ is the machine (a virtual machine's cores share
caches, memory bandwidth and possibly a physical core), not the gateway.

    python bench/worker_cost.py --rate 300 --seconds 8 --rounds 2 --spin
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scale  # noqa: E402
from bench._cpu import PgBackends, busy_seconds  # noqa: E402
from bench._report import table  # noqa: E402
from bench.scale import NUMBER, renice_group, renice_sessions, start_node  # noqa: E402
from gateway.cli import run_async  # noqa: E402
from gateway.loadtest.command import free_port  # noqa: E402
from gateway.loadtest.sipp import run_sipp  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def proc_counters(pid: int) -> dict[str, float]:
    """User and system CPU seconds and context switches of `pid` so far ({} once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    out = {"user": int(stat[11]) / TICK, "sys": int(stat[12]) / TICK}
    for key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
        m = re.search(rf"^{key}:\s+(\d+)", status, re.M)
        out[key.split("_")[0]] = float(m.group(1)) if m else 0.0
    return out


#: the system calls counted one by one (the rest only in the total): waiting for events, UDP (SIP) and TCP
#: (PostgreSQL, HTTP) traffic, thread hand-offs
SYSCALLS = ("epoll_wait", "epoll_pwait", "sendto", "recvfrom", "read", "write", "futex")


def start_perf(pid: int) -> subprocess.Popen[str] | None:
    """`perf stat` counting `pid`'s system calls until SIGINT, or None without perf."""
    if shutil.which("perf") is None:
        return None
    events = ",".join(["raw_syscalls:sys_enter", *(f"syscalls:sys_enter_{n}" for n in SYSCALLS)])
    return subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_perf(p: subprocess.Popen[str] | None) -> dict[str, float]:
    """{"all": system calls, name: calls of that name} counted by `p` ({} without perf)."""
    if p is None:
        return {}
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        return {}
    out: dict[str, float] = {}
    for line in err.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].strip().isdigit():
            event = fields[2]
            name = "all" if event == "raw_syscalls:sys_enter" else event.removeprefix("syscalls:sys_enter_")
            out[name] = float(fields[0])
    return out


async def pg_commits(pg: PgBackends) -> int:
    import asyncpg

    conn = await asyncpg.connect(pg.dsn)
    try:
        return int(await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))
    finally:
        await conn.close()


async def settled_commits(pg: PgBackends) -> int:
    """Commits once the statistics stopped moving (a busy backend reports them up to a second late, an idle one
    only at its exit)."""
    last, end = -1, time.monotonic() + 20
    while time.monotonic() < end:
        now = await pg_commits(pg)
        if now == last:
            return now
        last = now
        await asyncio.sleep(1.1)
    return last


def pg_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of `pids` so far (PostgreSQL's backends, Kamailio's processes)."""
    return sum(c.get("user", 0) + c.get("sys", 0) for c in map(proc_counters, pids))


def start_profile(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy sampling `pid` (collapsed stacks to `out`) for `seconds`, or None without py-spy on PATH."""
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    return subprocess.Popen([exe, "record", "--nonblocking", "-r", "200", "-d", str(int(seconds)), "-f", "raw",
                             "-o", str(out), "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def step(workers: int, db: str, rate: float, seconds: float, profile: Path | None = None) -> dict[str, object]:
    node = await start_node(workers, db, kamailio=True, carriers="sip")
    try:
        calls = int(rate * seconds)
        procs = {"supervisor" if workers > 1 else "worker 1": node.proc.pid}
        if workers > 1:
            for k, pid in enumerate(sorted(node.pids()), 1):
                procs[f"worker {k}"] = pid
        pg = PgBackends(db)
        backends = await pg()
        before = {name: proc_counters(pid) for name, pid in procs.items()}
        kam_pids = node.kamailio_pids()
        kam_before = pg_cpu(kam_pids)
        pg_before, commits0, busy0 = pg_cpu(backends), await pg_commits(pg), busy_seconds()
        perfs = {name: start_perf(pid) for name, pid in procs.items()}
        spies = [start_profile(pid, profile / f"{workers}w-{name.replace(' ', '')}.txt", seconds)
                 for name, pid in procs.items() if name.startswith("worker")] if profile else []
        t0 = time.monotonic()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        args = ["-sn", "uac", "-s", NUMBER[1:], "-r", str(rate), "-m", str(calls), "-l", str(int(rate * 3) + 100),
                "-d", "0", "-p", str(free_port(socket.SOCK_DGRAM)), "-timeout", f"{int(seconds + 60)}s",
                "-timeout_error"]
        if scale.NICE:                       # SIPp's session group too, once it runs (bench/scale.py's --nice)
            find = renice_sessions("sipp")

            async def renice_soon() -> None:
                end = time.monotonic() + 5
                while not find() and time.monotonic() < end:
                    await asyncio.sleep(0.05)
            asyncio.get_running_loop().create_task(renice_soon())
        res = await run_sipp(f"127.0.0.1:{node.kam_port}", args, deadline_s=seconds + 90)
        await asyncio.sleep(0.5)          # the call log's last write-behind batch
        wall = time.monotonic() - t0
        syscalls = {name: stop_perf(p) for name, p in perfs.items()}
        for spy in spies:
            if spy is not None:
                spy.wait(30)
        after = {name: proc_counters(pid) for name, pid in procs.items()}
        kam_after = pg_cpu(kam_pids)
        backends = sorted(set(backends) | set(await pg()))
        pg_after, busy1 = pg_cpu(backends), busy_seconds()
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        await pg.close()
    finally:
        node.stop()
    commits1 = await settled_commits(pg)      # the workers' backends report their last commits as they exit
    shutil.rmtree(res.workdir, ignore_errors=True)
    ok = res.stats.successful
    per: dict[str, dict[str, float]] = {}
    for name in procs:
        b, a = before[name], after[name]
        handled = ok / workers if name.startswith("worker") else ok
        d = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in ("user", "sys", "voluntary", "nonvoluntary")}
        per[name] = {"user_ms": 1000 * d["user"] / handled, "sys_ms": 1000 * d["sys"] / handled,
                     "wakeups": d["voluntary"] / handled, "preempted": d["nonvoluntary"] / handled,
                     **{f"sc_{k}": v / handled for k, v in syscalls[name].items()},
                     "cpu_pct": 100 * (d["user"] + d["sys"]) / wall}
    return {"workers": workers, "rate": rate, "ok": ok, "failed": res.stats.failed, "cps": res.stats.call_rate,
            "per": per, "pg_ms": 1000 * (pg_after - pg_before) / ok,
            "kam_ms": 1000 * (kam_after - kam_before) / ok, "commits": (commits1 - commits0) / ok,
            "sipp_ms": 1000 * (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) / ok,
            "box_pct": 100 * (busy1 - busy0) / wall, "load": os.getloadavg()[0]}


def _spin(n: int, out: multiprocessing.Queue[float]) -> None:
    """Python work without system calls (dicts, strings, small ints), as an event loop does between them."""
    t = time.process_time()
    d: dict[str, int] = {}
    for i in range(n):
        k = "k%d" % (i & 1023)
        d[k] = d.get(k, 0) + i
    out.put(time.process_time() - t)


def spin_test(n: int, rounds: int) -> list[list[str]]:
    """CPU seconds of the same loop: one process alone, then two at once (one per core)."""
    rows = []
    for r in range(rounds):
        for procs in (1, 2):
            q: multiprocessing.Queue[float] = multiprocessing.Queue()
            ps = [multiprocessing.Process(target=_spin, args=(n, q)) for _ in range(procs)]
            for p in ps:
                p.start()
            times = [q.get() for _ in ps]
            for p in ps:
                p.join()
            rows.append([str(r + 1), str(procs), " / ".join(f"{t:.3f}" for t in times), f"{os.getloadavg()[0]:.1f}"])
            print(rows[-1], flush=True)
    return rows


async def main_async(args: argparse.Namespace) -> None:
    if args.spin:
        rows = spin_test(args.spin_n, args.rounds)
        print(table(["round", "processes at once", "CPU s of each (same loop)", "load avg"], rows))
    out = []
    for r in range(args.rounds):
        for workers in args.shapes:
            res = await step(workers, args.db, args.rate, args.seconds, args.profile)
            for name, p in res["per"].items():
                out.append([str(r + 1), str(workers), f"{res['cps']:.0f}", str(res["failed"]), name,
                            f"{p['cpu_pct']:.0f}", f"{p['user_ms']:.3f}", f"{p['sys_ms']:.3f}",
                            f"{p['user_ms'] + p['sys_ms']:.3f}", f"{p['wakeups']:.2f}", f"{p['preempted']:.2f}",
                            f"{p.get('sc_all', float('nan')):.1f}",
                            " ".join(f"{n} {p[f'sc_{n}']:.1f}" for n in SYSCALLS if p.get(f"sc_{n}")),
                            f"{res['commits']:.3f}", f"{res['pg_ms']:.3f}", f"{res['kam_ms']:.3f}",
                            f"{res['sipp_ms']:.3f}", f"{res['box_pct']:.0f}", f"{res['load']:.1f}"])
                print(out[-1], flush=True)
    print(table(["round", "workers", "achieved CPS", "failed", "process", "CPU % of a core", "user ms per call",
                 "sys ms per call", "CPU ms per call", "wake-ups per call", "preempted per call",
                 "syscalls per call", "of which", "PG commits per call", "PG backends ms per call",
                 "Kamailio ms per call", "SIPp ms per call", "box busy %", "load avg"], out))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default=os.environ.get("GATEWAY_TEST_POSTGRES_URL"),
                   help="PostgreSQL URL of a database of its own (its gateway tables are dropped)")
    p.add_argument("--rate", type=float, default=300.0, help="total calls per second, the same for both shapes")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--shapes", type=lambda v: [int(n) for n in v.split(",")], default=[1, 2],
                   help="worker counts to run each round, e.g. 1 for one worker only (A/B of a code change)")
    p.add_argument("--spin", action="store_true", help="first the CPU-only loop: 1 process alone, then 2 at once")
    p.add_argument("--spin-n", type=int, default=5_000_000)
    p.add_argument("--profile", type=Path, help="directory: py-spy every worker (collapsed stacks per step; "
                   "py-spy on PATH), a separate question from the counters, which it disturbs")
    p.add_argument("--nice", type=int, default=0, help="scheduling priority of this run and everything it starts "
                   "(as bench/scale.py's --nice: on a shared box)")
    args = p.parse_args()
    if args.nice:
        scale.NICE = args.nice
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        renice_group(os.getpid(), args.nice)
    if not args.db or not args.db.startswith("postgres"):
        raise SystemExit("bench/worker_cost.py: --db postgresql://… (or GATEWAY_TEST_POSTGRES_URL)")

    async def go() -> int:
        with contextlib.suppress(KeyboardInterrupt):
            await main_async(args)
        return 0
    return run_async(go())


if __name__ == "__main__":
    sys.exit(main())
