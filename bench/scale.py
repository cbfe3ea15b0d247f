"""Scale-out: 1 worker versus `gateway serve --workers 2` on this machine, same harness, same run (issue "Scale out").

Each step starts a fresh node on PostgreSQL (`--db`, default $GATEWAY_TEST_POSTGRES_URL; its gateway tables are
dropped and created again) and, for the SIP benchmarks, a real Kamailio running deploy/kamailio/kamailio.cfg in
front of it, exactly as docs/deploy.md deploys it. Nothing is pinned: the workers, Kamailio, PostgreSQL and the load
generator share the machine's cores in both shapes, so every step also says where the cores went: CPU of the
workers (and supervisor), Kamailio, SIPp, the Twilio caller processes, PostgreSQL's backends of the database, this
harness, and the rest of the machine (bench/_cpu.py), in % of one core and per call. Counters come from every
worker (/healthz and /metrics read over one connection, so both answers are the same worker's).

* `rtp`: simultaneous 20 ms G.711 echo calls through Kamailio (SIPp plays G.711 for the whole call): the largest
  count with 0 failed calls and < 0.1 % of RTP lost/late inbound or unsent outbound (bench/sip_load.py's measure).
* `cps`: SIP calls per second through Kamailio with 0 failed calls (SIPp's built-in uac, signalling only); a
  failed step says why (SIPp's failure counters and what its error log says the calls received).
* `twilio`: Twilio Media Streams echo calls (bench/twilio_callers.py: callers spread over --procs processes): the
  largest N with p99 turnaround < 20 ms and 0 lost frames. Webhook and media websocket may land on different
  workers (SO_REUSEPORT), which needs the cluster layer's adoption of streams; the p99 after each call's first
  second is shown next to the verdict's p99, so adoption's cost is visible apart from the steady state.
* `http`: how SO_REUSEPORT spreads new HTTP connections over the workers, and /healthz requests per second.

Defaults step finely around the limits measured on the idle 2-core box, and each kind runs unattended in under
8 minutes there (a shape stops at its first failed step):

    python bench/scale.py cps           # --rates 200,250,…,600,700  --seconds 10
    python bench/scale.py twilio        # --steps 50,100,150,175,…,400  --seconds 10  --procs 2
    python bench/scale.py rtp           # --counts 400,450,500,600,800,1000  --hold 15
    python bench/scale.py http
    python bench/scale.py cps --nice -10    # a shared machine: this run and its sessions ahead of other work
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import twilio_callers  # noqa: E402
from bench._cpu import REST, CpuAccount, PgBackends, children, session_pids  # noqa: E402
from bench._placement import Placement  # noqa: E402
from bench._report import table, write_section  # noqa: E402
from bench.media_ws import ACCOUNT, RECORDING, TOKEN, prepare_db  # noqa: E402
from bench.media_ws import NUMBER as TWILIO_NUMBER  # noqa: E402
from bench.sip_load import long_media_scenario, media_port  # noqa: E402
from gateway.cli import run_async  # noqa: E402
from gateway.kamailio import MEMORY_MANAGERS  # noqa: E402
from gateway.loadtest.command import free_port, free_ports, parse_metrics, provision  # noqa: E402
from gateway.loadtest.sipp import SippResult, run_sipp  # noqa: E402

NUMBER = "+15550100000"
API_KEY = "bench-scale"
KAMAILIO_CFG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"


#: --nice: also given to the scheduler autogroup of every session this run starts (Kamailio, SIPp)
NICE = 0
#: --worker-cpus / --worker-share: the workers on cores (and budgets) of their own, everything else on the others
PLACEMENT: Placement | None = None
#: --workers-only: the shapes a sweep runs
SHAPES: tuple[int, ...] = (1, 2)


def renice_group(pid: int, nice: int) -> None:
    """With the kernel's autogroup scheduling (sched_autogroup_enabled), a process's nice only ranks it inside its
    session's group, and every session's group gets an equal share: a run at nice -10 still got ~1/14 of the box
    next to 13 busy sessions of other users. The group's own nice (/proc/PID/autogroup) is what counts there."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def renice_sessions(name: str) -> Callable[[], list[int]]:
    """A CpuAccount finder for children called `name` that also renices their session's group (--nice): SIPp
    runs in a session of its own (gateway/loadtest/sipp.py)."""
    done: set[int] = set()

    def find() -> list[int]:
        pids = children(os.getpid(), name)
        for p in pids:
            if NICE and p not in done:
                renice_group(p, NICE)
                done.add(p)
        return pids
    return find


class Node:
    """`gateway serve` (workers=1) or `gateway serve --workers N` on PostgreSQL, optionally behind Kamailio."""

    def __init__(self, workers: int, db: str, kamailio: bool, carriers: str) -> None:
        self.workers, self.db, self.with_kamailio, self.carriers = workers, db, kamailio, carriers
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-scale-{workers}w-"))
        # worker k listens on sip_port + k, UDP and TCP (gateway/workers.py): all N + 1 checked free for both
        self.http_port, self.sip_port = free_port(), free_ports(1 + workers)
        self.kam_port = free_port(socket.SOCK_DGRAM)
        self.proc: subprocess.Popen | None = None
        self.kam: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def procs(self) -> set[str]:
        return {"bench"} if self.workers == 1 else {f"bench.{k}" for k in range(1, self.workers + 1)}

    async def start(self) -> Node:
        await reset_schema(self.db)
        if self.carriers == "twilio":
            await prepare_db(self.db, str(self.tmp))   # bench/media_ws.py's Twilio account, number and echo agent
        env = {**os.environ, "GATEWAY_CARRIERS": self.carriers, "GATEWAY_NODE_ID": "bench",
               "GATEWAY_SIP_HOST": "127.0.0.1", "GATEWAY_ADVERTISED_IP": "127.0.0.1",
               "GATEWAY_RTP_PORT_MIN": "30000", "GATEWAY_RTP_PORT_MAX": "39999",
               "GATEWAY_ENABLE_SIP": "true" if self.carriers == "sip" else "false"}
        with open(self.tmp / "gateway.log", "w") as log:   # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--workers", str(self.workers), "--db", self.db,
                 "--host", "127.0.0.1", "--http-port", str(self.http_port), "--sip-port", str(self.sip_port),
                 "--engine", "echo", "--data-dir", str(self.tmp), "--api-key", API_KEY, "--max-calls", "10000",
                 "--public-url", self.url, "--log-level", "WARNING", "--http-max-connections-per-ip", "10000"],
                env=env, stdout=subprocess.DEVNULL, stderr=log)
        await self._wait_all()
        if PLACEMENT is not None:
            PLACEMENT.workers(None if self.workers == 1 else self.proc.pid, self.pids())
        if self.carriers == "sip":
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
                await provision(http, self.url, NUMBER)
            await asyncio.sleep(0.5)
        if self.with_kamailio:
            await self._start_kamailio()
        return self

    async def _wait_all(self, timeout: float = 120) -> None:
        seen: set[str] = set()
        end = time.monotonic() + timeout
        while not self.procs <= seen:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"node did not start; see {self.tmp}/gateway.log")
            got = await one_worker(self.url)
            if got:
                seen.add(got[0])
            # a pause after an answer too: while one worker is not up yet, the ones that are would otherwise be
            # asked in a tight loop, each time on a new connection (measured: ~14 000 sockets in TIME_WAIT,
            # almost every even port of the box, which the next nodes' SIP ports then failed to bind)
            await asyncio.sleep(0.05 if got else 0.1)

    async def _start_kamailio(self) -> None:
        ds = self.tmp / "dispatcher.list"
        if self.workers == 1:                 # the supervisor writes it for N > 1; one process listens itself
            ds.write_text(f"1 sip:127.0.0.1:{self.sip_port} 0 0 duid=bench\n")
        run = self.tmp / "kamailio-run"
        run.mkdir()
        with open(self.tmp / "kamailio.log", "w") as log:
            self.kam = subprocess.Popen(
                ["kamailio", "-f", str(KAMAILIO_CFG), "-DD", "-E", "-Y", str(run), *MEMORY_MANAGERS, "-A",
                 f"LISTEN=udp:127.0.0.1:{self.kam_port}", "-A", f'DS_LIST="{ds}"', "-A", "DS_PING_INTERVAL=2",
                 "-A", f"WORKERS_LISTEN=udp:127.0.0.1:{free_port(socket.SOCK_DGRAM)}"],
                stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)
        if NICE:
            renice_group(self.kam.pid, NICE)
        end = time.monotonic() + 20
        while not (run / "kamailio_ctl").exists():
            if self.kam.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"kamailio did not start; see {self.tmp}/kamailio.log")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)

    def pids(self) -> list[int]:
        if self.workers == 1:
            return [self.proc.pid]
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(p) for p in kids]

    def gateway_pids(self) -> list[int]:
        """The supervisor (with --workers N) and every worker: all the gateway's processes."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid] if self.workers == 1 else [self.proc.pid, *self.pids()]

    def kamailio_pids(self) -> list[int]:
        return session_pids(self.kam.pid) if self.kam is not None and self.kam.poll() is None else []

    def account(self, db: str, **more: Callable[[], Iterable[int]]) -> tuple[CpuAccount, PgBackends]:
        """CPU per component for a step: the gateway, Kamailio, PostgreSQL's backends of `db`, this harness
        process, and whatever else the step starts (`more`)."""
        pg = PgBackends(db)
        parts: dict[str, Callable[[], Iterable[int]]] = {"workers": self.gateway_pids}
        if self.with_kamailio:
            parts["kamailio"] = self.kamailio_pids
        parts.update(more)
        parts.setdefault("harness", lambda: [os.getpid()])
        return CpuAccount(parts, {"postgres": pg}), pg

    async def counters(self) -> dict[str, float]:
        """Every worker's /metrics counters, summed (each read on the connection its /healthz answer came on)."""
        per: dict[str, dict[str, float]] = {}
        end = time.monotonic() + 30
        while not self.procs <= set(per) and time.monotonic() < end:
            got = await one_worker(self.url, metrics=True)
            if got:
                per[got[0]] = got[1]
            if not self.procs <= set(per):
                await asyncio.sleep(0.05)     # not in a tight loop of new connections (see _wait_all)
        total: Counter = Counter()
        for d in per.values():
            total.update(d)
        return dict(total)

    def log_tails(self, lines: int = 8) -> str:
        """The last lines of the gateway's and Kamailio's logs (printed when a step fails: the node's directory is
        removed with it)."""
        out = []
        for name in ("gateway.log", "kamailio.log"):
            with contextlib.suppress(OSError):
                tail = (self.tmp / name).read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        for p in (self.kam, self.proc):
            if p is not None and p.poll() is None:
                if p is self.kam:
                    os.killpg(p.pid, signal.SIGTERM)
                else:
                    p.send_signal(signal.SIGTERM)
                    time.sleep(0.2)
                    p.send_signal(signal.SIGTERM)     # second signal: hang up now
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        if PLACEMENT is not None:
            PLACEMENT.release_groups()
        shutil.rmtree(self.tmp, ignore_errors=True)


async def start_node(workers: int, db: str, kamailio: bool, carriers: str) -> Node:
    """A started node; new ports and another try when one was taken between choosing and binding it."""
    for attempt in range(3):
        node = Node(workers, db, kamailio, carriers)
        try:
            return await node.start()
        except RuntimeError:
            node.stop()
            if attempt == 2:
                raise
        except BaseException:          # provisioning failed (or the run was interrupted): leave no node behind
            node.stop()
            raise
    raise AssertionError("unreachable")


async def one_worker(url: str, metrics: bool = False) -> tuple[str, dict[str, float]] | None:
    """(process id, its counters) from one new connection: /healthz then /metrics over the same socket."""
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            async with http.get(url + "/healthz") as r:
                if r.status != 200:
                    return None
                proc = (await r.json())["proc"]
            if not metrics:
                return proc, {}
            async with http.get(url + "/metrics") as r:
                return proc, parse_metrics(await r.text())
    except (TimeoutError, aiohttp.ClientError):
        return None


async def reset_schema(db: str) -> None:
    from gateway.store import Store
    from gateway.store.models import Base

    store = Store(db)
    await store.open()
    async with store.engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    await store.close()


# -- (b) G.711 echo calls through Kamailio ------------------------------------------------------------------------
async def rtp_step(workers: int, db: str, n: int, hold: float, scenario: Path) -> dict:
    node = await start_node(workers, db, kamailio=True, carriers="sip")
    try:
        before = await node.counters()
        acct, pg = node.account(db, sipp=renice_sessions("sipp"))
        await acct.start()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        rate = max(10.0, n / 10)          # every call up within 10 s
        args = ["-sf", str(scenario), "-s", NUMBER[1:], "-r", str(rate), "-m", str(n), "-l", str(n),
                "-d", str(int(hold * 1000)), "-p", str(free_port(socket.SOCK_DGRAM)), "-mp", str(media_port()),
                "-timeout", f"{int(n / rate + hold + 60)}s", "-timeout_error"]
        res = await run_sipp(f"127.0.0.1:{node.kam_port}", args, deadline_s=n / rate + hold + 90)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        acct.exact("sipp", kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime)
        used = await acct.stop()
        await pg.close()
        await asyncio.sleep(1.0)
        after = await node.counters()
        failed = res.stats.failed + max(0, n - res.stats.successful - res.stats.failed)
        if failed:
            print(node.log_tails(), flush=True)
    finally:
        node.stop()
    why = sipp_failures(res) if failed else ""
    shutil.rmtree(res.workdir, ignore_errors=True)         # SIPp's statistics and logs of the step
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    ok = res.stats.successful
    due_out = ok * hold * 50
    rtp_in = d.get("gateway_rtp_packets_received_total", 0)
    lost = d.get("gateway_rtp_packets_lost_total", 0) + d.get("gateway_rtp_packets_late_total", 0)
    short = max(0.0, due_out - d.get("gateway_rtp_packets_sent_total", 0))
    bad = 100 * (lost + short) / max(rtp_in + due_out, 1)
    return {"workers": workers, "n": n, "ok": ok, "failed": failed, "bad": bad, "used": used, "why": why,
            "pct": acct.percent(used),
            "late_ticks": d.get("gateway_rtp_clock_late_ticks_total", 0), "pass": failed == 0 and bad < 0.1,
            "load": os.getloadavg()[0]}


# -- (c) CPS through Kamailio -----------------------------------------------------------------------------------------
def sipp_failures(res: SippResult) -> str:
    """Why SIPp counted calls failed: its failure counters, and what its error log says the calls got
    (e.g. `180 after 200`: a 180 Ringing arrived while it waited for the BYE's answer)."""
    parts = [f"{k}: {v}" for k, v in sorted(res.stats.failed_breakdown.items())]
    got: Counter = Counter()
    try:
        text = Path(res.workdir, "errors.log").read_text(errors="replace")
    except OSError:
        text = ""
    for m in re.finditer(r"while expecting '([^']*)'[^,]*, received '(?:SIP/2\.0 )?(\S+)", text):
        got[f"got {m.group(2)} expecting {m.group(1)}"] += 1
    got.update(m.group(0) for m in re.finditer(r"[Tt]imeout on (?:recv|send)", text))
    parts += [f"{k}: {v}" for k, v in got.most_common(3)]
    return "; ".join(parts)


async def cps_step(workers: int, db: str, rate: float, seconds: float) -> dict:
    node = await start_node(workers, db, kamailio=True, carriers="sip")
    try:
        calls = int(rate * seconds)
        acct, pg = node.account(db, sipp=renice_sessions("sipp"))
        await acct.start()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        args = ["-sn", "uac", "-s", NUMBER[1:], "-r", str(rate), "-m", str(calls), "-l", str(int(rate * 3) + 100),
                "-d", "0", "-p", str(free_port(socket.SOCK_DGRAM)), "-timeout", f"{int(seconds + 60)}s",
                "-timeout_error"]
        res = await run_sipp(f"127.0.0.1:{node.kam_port}", args, deadline_s=seconds + 90)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)      # SIPp reaped: its whole CPU, to the end
        acct.exact("sipp", kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime)
        used = await acct.stop()
        await pg.close()
        s = res.stats
        failed = s.failed + max(0, calls - s.successful - s.failed)
        if failed:
            print(node.log_tails(), flush=True)
    finally:
        node.stop()
    why = sipp_failures(res) if failed else ""
    shutil.rmtree(res.workdir, ignore_errors=True)
    return {"workers": workers, "rate": rate, "calls": calls, "ok": s.successful, "failed": failed,
            "cps": s.call_rate, "p99": res.percentile(99), "cpu": acct.percent(used)["workers"],
            # 0 failed, and the pace held: SIPp stops starting calls while its -l limit of open calls is reached
            "pass": failed == 0 and s.call_rate >= 0.95 * rate,
            "load": os.getloadavg()[0], "used": used, "pct": acct.percent(used), "why": why}


# -- (a) Twilio Media Streams -----------------------------------------------------------------------------------------
async def twilio_run(workers: int, db: str, n: int, seconds: float, payloads: list[str], procs: int) -> dict:
    node = await start_node(workers, db, kamailio=False, carriers="twilio")
    try:
        acct, pg = node.account(db)
        try:
            r = await twilio_callers.run_step(node.http_port, n, seconds, payloads, procs=procs, account=ACCOUNT,
                                              token=TOKEN, number=TWILIO_NUMBER, on_running=acct.start)
        except (RuntimeError, OSError, TimeoutError) as e:
            # the step failed (e.g. calls could not be set up in time): a failed row, and the sweep goes on
            print(f"twilio step {workers} workers, {n} calls: {type(e).__name__}: {e}\n{node.log_tails()}", flush=True)
            r = {"n": n, "frames": 0, "p50": float("nan"), "p99": float("nan"), "p99_steady": float("nan"),
                 "max": float("nan"), "dropped": 0, "bad": 0, "errors": n, "gen_late_p99": float("nan"),
                 "procs": procs, "generator_cpu": 0.0}
            if not acct.running:                # it failed before its frames started
                await acct.start()
        acct.exact("generator", r["generator_cpu"])
        used = await acct.stop()
        await pg.close()
        await asyncio.sleep(2.0)   # let the gateway close the calls (call-log writes) before the node stops
    finally:
        node.stop()
    r.update(used=used, pct=acct.percent(used), cpu=acct.percent(used)["workers"], load=os.getloadavg()[0])
    r.update(workers=workers, **{"pass": r["p99"] < 20.0 and r["dropped"] == 0 and r["bad"] == 0
                                 and r["errors"] == 0})
    return r


# -- SO_REUSEPORT spread ----------------------------------------------------------------------------------------------
async def http_spread(workers: int, db: str, connections: int, seconds: float) -> dict:
    node = await start_node(workers, db, kamailio=False, carriers="twilio")
    try:
        spread: Counter = Counter()
        for _ in range(connections):
            got = await one_worker(node.url)
            spread[got[0] if got else "error"] += 1
        done = 0
        end = time.monotonic() + seconds

        async def client() -> None:
            nonlocal done
            async with aiohttp.ClientSession() as http:
                while time.monotonic() < end:
                    async with http.get(node.url + "/healthz") as r:
                        await r.read()
                    done += 1
        await asyncio.gather(*(client() for _ in range(32)))
    finally:
        node.stop()
    return {"workers": workers, "spread": dict(sorted(spread.items())), "rps": done / seconds}


async def sweep(steps: list, run, row, score=lambda step, r: step) -> tuple[dict[int, float], list[list]]:
    """For 1 then 2 workers: run the steps in order until one fails; the best passing score per shape, and rows."""
    best: dict[int, float] = {1: 0, 2: 0}
    rows: list[list] = []
    for workers in SHAPES:
        for step in steps:
            r = await run(workers, step)
            rows.append([workers, *row(step, r), "pass" if r["pass"] else "fail"])
            print(rows[-1], flush=True)
            if not r["pass"]:
                break
            best[workers] = max(best[workers], score(step, r))
    return best, rows


CPS_PARTS = ["workers", "kamailio", "sipp", "postgres", "harness", REST]
TWILIO_PARTS = ["workers", "generator", "postgres", "harness", REST]
SHORT = {"workers": "workers", "kamailio": "Kamailio", "sipp": "SIPp", "postgres": "PG backends",
         "harness": "harness", "generator": "generator", REST: "rest of box"}


def cpu_headers(parts: list[str]) -> list[str]:
    return [f"CPU % {SHORT[p]}" for p in parts]


def cpu_cells(r: dict, parts: list[str]) -> list[str]:
    """CPU of each component over the step, in % of one core (the machine has 2 cores: 200 %)."""
    return [f"{r['pct'].get(p, 0.0):.0f}" for p in parts]


def per_call(r: dict, calls: int, parts: list[str], scale: float = 1000) -> str:
    """CPU per call of every component but the rest of the box, e.g. `2.1 / 0.6 / 0.4 / 0.3 / 0.0`: milliseconds
    per call (CPS), or with `scale` = 1 / seconds of media: % of one core per concurrent call (streams)."""
    if scale != 1000:
        scale *= 100
    return " / ".join(f"{scale * r['used'].get(p, 0.0) / max(calls, 1):.2f}" for p in parts if p != REST)


def _ratio(one: int | float, two: int | float) -> str:
    return f"{two / one:.2f}×" if one else "-"


async def main_async(args: argparse.Namespace) -> None:
    def report(name: str, title: str, body: str, command: str) -> None:
        if PLACEMENT is not None:       # its own section: the unpinned one stays what it measured
            name, title = name + "_split", title + " — workers on a core of their own"
            body = f"Placement: {PLACEMENT.describe()}.\n\n" + body.replace(NOTE, SPLIT_NOTE)
            command += f" --worker-cpus {','.join(map(str, sorted(args.worker_cpus)))}"
            if args.worker_share is not None:
                command += f" --worker-share {args.worker_share:g}"
        print(body, flush=True)
        if not args.no_write:
            write_section(name, title, body, command=command)

    db = args.db
    if not db:
        raise SystemExit("bench/scale.py: pass --db postgresql://… or set GATEWAY_TEST_POSTGRES_URL (its gateway "
                         "tables are dropped and created again)")
    if args.kind == "rtp":
        scenario = long_media_scenario(args.hold + 2)
        best, rows = await sweep(
            args.counts, lambda w, n: rtp_step(w, db, n, args.hold, scenario),
            lambda n, r: [n, r["ok"], r["failed"], f"{r['bad']:.3f}", int(r["late_ticks"]), *cpu_cells(r, CPS_PARTS),
                          per_call(r, n, CPS_PARTS, scale=1 / args.hold), f"{r['load']:.1f}", r["why"] or "-"])
        body = (f"Simultaneous {args.hold:g}-second 20 ms G.711 echo calls through Kamailio with 0 failed and < 0.1 % "
                f"RTP lost/late/unsent: **1 worker {best[1]}, 2 workers {best[2]} ({_ratio(best[1], best[2])})**.\n\n"
                + table(["workers", "calls", "ok", "failed", "lost/late/unsent %", "clock late ticks",
                         *cpu_headers(CPS_PARTS), "CPU % of a core per call: " + " / ".join(CPS_PARTS[:-1]),
                         "load avg", "why calls failed (SIPp)", "verdict"], rows))
        report("scale_rtp", "Scale-out (b): G.711 echo calls through Kamailio, 1 vs 2 workers", body + NOTE,
                      command=f"python bench/scale.py rtp --counts {','.join(map(str, args.counts))} "
                              f"--hold {args.hold:g}")
    elif args.kind == "cps":
        best, rows = await sweep(
            args.rates, lambda w, rate: cps_step(w, db, rate, args.seconds),
            lambda rate, r: [f"{rate:g}", r["calls"], r["ok"], r["failed"], f"{r['cps']:.0f}",
                             f"{r['p99']:.0f}" if r["p99"] is not None else "-", *cpu_cells(r, CPS_PARTS),
                             per_call(r, r["ok"] or r["calls"], CPS_PARTS), f"{r['load']:.1f}", r["why"] or "-"],
            score=lambda rate, r: r["cps"])
        body = (f"Sustained SIP calls per second through Kamailio with 0 failed calls (and at least 95 % of the "
                f"offered rate achieved): **1 worker {best[1]:.0f}, "
                f"2 workers {best[2]:.0f} ({_ratio(best[1], best[2])})**.\n\n"
                + table(["workers", "offered CPS", "calls", "ok", "failed", "achieved CPS", "INVITE→200 p99 ms",
                         *cpu_headers(CPS_PARTS), "CPU ms per call: " + " / ".join(CPS_PARTS[:-1]), "load avg",
                         "why calls failed (SIPp)", "verdict"], rows))
        report("scale_cps", "Scale-out (c): SIP CPS through Kamailio, 1 vs 2 workers", body + NOTE,
                      command=f"python bench/scale.py cps --rates {','.join(f'{r:g}' for r in args.rates)}")
    elif args.kind == "twilio":
        ulaw = RECORDING.read_bytes()
        payloads = [base64.b64encode(ulaw[i:i + 160]).decode() for i in range(0, len(ulaw) - 159, 160)]
        best, rows = await sweep(
            args.steps, lambda w, n: twilio_run(w, db, n, args.seconds, payloads, args.procs),
            lambda n, r: [n, f"{r['p50']:.2f}", f"{r['p99']:.2f}", f"{r['p99_steady']:.2f}", r["dropped"], r["errors"],
                          f"{r['gen_late_p99']:.1f}", f"{1e6 * r['generator_cpu'] / max(r['frames'], 1):.1f}",
                          *cpu_cells(r, TWILIO_PARTS),
                          per_call(r, n, TWILIO_PARTS, scale=1 / args.seconds), f"{r['load']:.1f}"])
        body = (f"Concurrent Twilio Media Streams echo calls with p99 turnaround < 20 ms and 0 lost frames: "
                f"**1 worker {best[1]}, 2 workers {best[2]} ({_ratio(best[1], best[2])})**.\n\n"
                + table(["workers", "calls", "p50 ms", "p99 ms", "p99 ms after each call's 1st s", "lost frames",
                         "call errors",
                         "generator late p99 ms", "generator µs per frame", *cpu_headers(TWILIO_PARTS),
                         "CPU % of a core per call: " + " / ".join(TWILIO_PARTS[:-1]), "load avg", "verdict"], rows))
        report("scale_twilio", "Scale-out (a): Twilio Media Streams, 1 vs 2 workers", body + NOTE,
                      command=f"python bench/scale.py twilio --steps {','.join(map(str, args.steps))}")
    else:
        rows = []
        for w in (1, 2):
            r = await http_spread(w, db, args.connections, args.seconds)
            rows.append([w, ", ".join(f"{k}: {v}" for k, v in r["spread"].items()), f"{r['rps']:.0f}"])
            print(rows[-1], flush=True)
        body = (f"{args.connections} new HTTP connections to the node's one port, and which worker answered each "
                f"(SO_REUSEPORT: the kernel picks by a hash of the connection's addresses); then 32 keep-alive "
                f"clients asking `/healthz` for {args.seconds:g} s.\n\n"
                + table(["workers", "connections answered by", "/healthz requests/s"], rows))
        report("scale_http", "Scale-out: the shared HTTP port (SO_REUSEPORT)", body + NOTE,
                      command="python bench/scale.py http")


NOTE = ("\n\nSame harness and same run for both shapes: a fresh node per step on PostgreSQL, `gateway serve` (1 "
        "worker) or `gateway serve --workers 2`, nothing pinned; the load generator (SIPp or the Twilio caller "
        "processes), Kamailio and PostgreSQL share the same 2 cores. CPU columns: % of one core over the step (the "
        "machine has 200 %), from /proc of every process of each part: workers (with the supervisor), Kamailio, "
        "SIPp, the caller processes, PostgreSQL's backends of the benchmark's database, this harness, and the rest "
        "of the machine (busy time nobody here used: other work on the box); per call: CPU ms per call (CPS) or % of "
        "a core per concurrent call (streams, RTP). Load avg: the machine's 1-minute load average at the end of "
        "the step.")


SPLIT_NOTE = ("\n\nSame harness and same run for both shapes: a fresh node per step on PostgreSQL, `gateway serve` (1 "
              "worker) or `gateway serve --workers 2`, placed as the line above says (bench/_placement.py): the "
              "workers with the same CPU budget each in both shapes, the load generator, Kamailio and "
              "PostgreSQL outside the budgets, so the ratio is what a second worker adds, not what the generator "
              "takes. "
              "CPU columns: % of one core over the step, per part, as in the unpinned tables.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("rtp", "cps", "twilio", "http"))
    p.add_argument("--db", default=os.environ.get("GATEWAY_TEST_POSTGRES_URL"),
                   help="PostgreSQL URL (its gateway tables are dropped); default $GATEWAY_TEST_POSTGRES_URL. Give the "
                        "benchmark a database of its own: the test suite drops the tables of that one too, and a "
                        "suite running meanwhile fails the step (seen: every call 403, the number gone)")
    p.add_argument("--counts", default=[400, 450, 500, 600, 800, 1000],
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--hold", type=float, default=15.0)
    p.add_argument("--rates", default=[200, 250, 300, 350, 400, 450, 500, 550, 600, 700],
                   type=lambda s: [float(x) for x in s.split(",")])
    p.add_argument("--steps", default=[50, 100, 150, 175, 200, 225, 250, 300, 350, 400],
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--procs", type=int, default=2, help="processes the Twilio callers are spread over")
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--no-write", action="store_true", help="print the table only; leave BENCHMARKS.md alone")
    p.add_argument("--nice", type=int, default=0, help="scheduling priority of this run and everything it starts "
                                                       "(e.g. -10 on a machine shared with other work; as root)")
    p.add_argument("--worker-cpus", type=lambda s: {int(x) for x in s.split(",")},
                   help="pin the workers to these cores (e.g. 0) and everything else (generator, Kamailio, "
                        "PostgreSQL, this harness) to the others: a machine where the load has cores of its own "
                        "(bench/_placement.py)")
    p.add_argument("--worker-share", type=float, help="with --worker-cpus: a CPU budget per worker, in cores "
                                                      "(e.g. 0.5: two workers fill one core), as a cgroup quota")
    p.add_argument("--workers-only", type=int, choices=(1, 2), help="run only this shape (e.g. 1 worker pinned "
                                                                     "to a core of its own: its capacity per core)")
    args = p.parse_args()
    global NICE, PLACEMENT, SHAPES
    NICE = args.nice
    if args.worker_share is not None and args.worker_cpus is None:
        p.error("--worker-share needs --worker-cpus")
    if args.workers_only:
        SHAPES = (args.workers_only,)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)     # gateway workers, Kamailio and SIPp inherit it
        renice_group(os.getpid(), args.nice)
    if args.worker_cpus is not None:
        PLACEMENT = Placement(args.worker_cpus, args.worker_share)
        PLACEMENT.start()
    t0 = time.monotonic()
    try:
        run_async(main_async(args))
    finally:
        if PLACEMENT is not None:
            PLACEMENT.stop()
    print(f"bench/scale.py {args.kind}: {time.monotonic() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
