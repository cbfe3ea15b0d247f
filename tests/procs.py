"""Real processes for scale-out tests: `gateway serve` (one process or a `--workers N` supervisor), a real
`kamailio` running deploy/kamailio/kamailio.cfg, and a clean PostgreSQL schema. All on 127.0.0.1, bounded in time,
stopped by PID.

    pg = await fresh_postgres()                                  # skips without GATEWAY_TEST_POSTGRES_URL
    gw = await GatewayProc.start(tmp_path, "--workers", "2", "--db", pg)
    await gw.wait_procs({"t.1", "t.2"})                          # both workers answer on the shared HTTP port
    kam = await KamailioProc.start(tmp_path, dispatcher_list=tmp_path / "dispatcher.list", ping_interval=1)
    await kam.wait_flags(lambda flags: all(f.startswith("A") for f in flags.values()))
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.kamailio import MEMORY_MANAGERS
from gateway.loadtest.command import free_ports
from sipp import free_port, rtp_range, wait_for

ROOT = Path(__file__).resolve().parent.parent
KAMAILIO_CFG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"
API_KEY = "test-api-key"
NODE = "t"
PG_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL")

needs_kamailio = pytest.mark.skipif(shutil.which("kamailio") is None or shutil.which("kamcmd") is None,
                                    reason="kamailio (Debian package kamailio) not installed")
needs_kamailio_tls = pytest.mark.skipif(not any(Path("/usr/lib").glob("*/kamailio/modules/tls.so")),
                                        reason="Kamailio's tls module (Debian package kamailio-tls-modules) not "
                                               "installed")


async def fresh_postgres() -> str:
    """GATEWAY_TEST_POSTGRES_URL with every gateway table dropped and created again (the test's own schema)."""
    if not PG_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL not set (no PostgreSQL server for this run)")
    from gateway.store import Store
    from gateway.store.models import Base

    store = Store(PG_URL)
    await store.open()
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
    finally:
        await store.close()
    return PG_URL


async def until(predicate, timeout: float, what: str, interval: float = 0.1):
    """sipp.wait_for, failing with `what` in the message."""
    try:
        return await wait_for(predicate, timeout, interval)
    except AssertionError:
        raise AssertionError(f"{what}: not within {timeout} s") from None


class GatewayProc:
    """`python -m gateway serve …` with its own ports, data dir and log file."""

    def __init__(self, proc: subprocess.Popen, http_port: int, sip_port: int, data_dir: Path, log: Path) -> None:
        self.proc = proc
        self.http_port = http_port
        self.sip_port = sip_port
        self.data_dir = data_dir
        self.log = log

    @classmethod
    async def start(cls, tmp: Path, *args: str, env: dict[str, str] | None = None, sip_port: int | None = None,
                    carriers: str = "sip") -> GatewayProc:
        http_port = free_port(kind=__import__("socket").SOCK_STREAM)
        workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 0
        sip_port = sip_port or free_ports(1 + workers)      # worker k listens on sip_port + k
        data_dir = tmp / "gw"
        data_dir.mkdir(exist_ok=True)
        rtp = rtp_range(200)
        log = tmp / f"gateway-{http_port}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "GATEWAY_SIP_HOST": "127.0.0.1",
                    "GATEWAY_ADVERTISED_IP": "127.0.0.1", "GATEWAY_CARRIERS": carriers,
                    "GATEWAY_RTP_PORT_MIN": str(rtp["rtp_port_min"]), "GATEWAY_RTP_PORT_MAX": str(rtp["rtp_port_max"]),
                    "GATEWAY_NODE_ID": NODE, **(env or {})}
        full_env.pop("GATEWAY_PUBLIC_URL", None)
        with open(log, "w") as out:   # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--http-port", str(http_port),
                 "--sip-port", str(sip_port), "--data-dir", str(data_dir), "--engine", "echo", "--api-key", API_KEY,
                 "--log-level", "INFO", *args],
                env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=str(tmp))
        return cls(proc, http_port, sip_port, data_dir, log)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    async def health(self) -> tuple[int, dict] | None:
        """One GET /healthz on a new connection (so SO_REUSEPORT may pick another worker each time)."""
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                async with http.get(self.url("/healthz"), timeout=aiohttp.ClientTimeout(total=5)) as r:
                    return r.status, await r.json()
        except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
            return None

    async def wait_procs(self, procs: set[str], timeout: float = 90) -> None:
        """Until every process in `procs` has answered /healthz 200 (workers share the port: ask repeatedly)."""
        seen: set[str] = set()

        async def all_seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}):\n{self.output()}")
            h = await self.health()
            if h and h[0] == 200:
                seen.add(h[1]["proc"])
            return procs <= seen
        await until(all_seen, timeout, f"/healthz from {sorted(procs)} (seen {sorted(seen)})\n{self.output()}",
                    interval=0.05)

    async def api(self, method: str, path: str, body: dict | None = None, expect: int | None = None) -> dict:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            async with http.request(method, self.url("/api/v1" + path), json=body) as r:
                data = await r.json()
                assert expect is None or r.status == expect, (r.status, data)
                return data

    def worker_pids(self) -> dict[int, int]:
        """{worker index: pid} of the supervisor's live children, from /proc."""
        out = {}
        for pid in _children(self.proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--worker-index" in argv:
                out[int(argv[argv.index(b"--worker-index") + 1])] = pid
        return out

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        await until(lambda: self.proc.poll() is not None, timeout, f"gateway exit\n{self.output()}")
        return self.proc.returncode

    async def close(self) -> None:
        """Stop it if the test did not: SIGTERM twice (drain, then hang up now), SIGKILL after 20 s."""
        if self.proc.poll() is None:
            self.signal()
            await asyncio.sleep(0.2)
            self.signal()
            try:
                await self.wait_exit(20)
            except AssertionError:
                for pid in self.worker_pids().values():
                    _kill(pid)
                self.proc.kill()
                self.proc.wait()
        for pid in self.worker_pids().values():
            _kill(pid)


def catches(pid: int, sig: int = signal.SIGTERM) -> bool:
    """Has process `pid` a handler for `sig` yet (the SigCgt mask in /proc/<pid>/status)? False once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Kamailio:
    """A kamailio process of a test: its run dir (control socket), log, and stop by process group."""

    proc: subprocess.Popen
    run_dir: Path
    log: Path

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"kamailio exited ({self.proc.returncode}):\n{self.output()}")
        return (self.run_dir / "kamailio_ctl").exists()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def kamcmd(self, *command: str) -> str:
        return subprocess.run(["kamcmd", "-s", f"unix:{self.run_dir}/kamailio_ctl", *command],
                              capture_output=True, text=True, timeout=10).stdout

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class KamailioProc(_Kamailio):
    """A real kamailio running deploy/kamailio/kamailio.cfg (unchanged) on 127.0.0.1, in the foreground."""

    def __init__(self, proc: subprocess.Popen, port: int, run_dir: Path, log: Path, workers_port: int = 0,
                 tls_port: int | None = None) -> None:
        self.proc = proc
        self.port = port
        self.workers_port = workers_port    # WORKERS_LISTEN: requests to the workers leave from this port
        self.tls_port = tls_port
        self.run_dir = run_dir
        self.log = log

    @classmethod
    async def start(cls, tmp: Path, *, dispatcher_list: Path, ping_interval: int = 1, fr_timer_ms: int = 1000,
                    children: int = 2, tls: tuple[str, str] | None = None) -> KamailioProc:
        """`tls`: (certificate, key) PEM files: Kamailio also listens for SIP over TLS (`tls_port`)."""
        port, workers_port = free_port(), free_port()
        tls_port = free_port(kind=__import__("socket").SOCK_STREAM) if tls else None
        tls_args = ["-A", f"LISTEN_TLS=tls:127.0.0.1:{tls_port}", "-A", f'TLS_CERT="{tls[0]}"',
                    "-A", f'TLS_KEY="{tls[1]}"'] if tls else []
        run_dir = tmp / "kamailio-run"
        run_dir.mkdir(exist_ok=True)
        log = tmp / "kamailio.log"
        with open(log, "w") as out:   # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                ["kamailio", "-f", str(KAMAILIO_CFG), "-DD", "-E", "-Y", str(run_dir), *MEMORY_MANAGERS,
                 "-A", f"LISTEN=udp:127.0.0.1:{port}", "-A", f'DS_LIST="{dispatcher_list}"',
                 "-A", f"WORKERS_LISTEN=udp:127.0.0.1:{workers_port}",
                 "-A", f"DS_PING_INTERVAL={ping_interval}", "-A", f"FR_TIMER={fr_timer_ms}",
                 "-A", f"CHILDREN={children}", "-A", "LOG_LEVEL=2", *tls_args],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        kam = cls(proc, port, run_dir, log, workers_port, tls_port)
        await until(lambda: kam._ready(), 20, f"kamailio control socket\n{kam.output()}")
        return kam

    def flags(self) -> dict[str, str]:
        """{destination URI: dispatcher flags} from `kamcmd dispatcher.list` (A active, I inactive, P probing…)."""
        return dict(re.findall(r"URI: (\S+)\s+FLAGS: (\S+)", self.kamcmd("dispatcher.list")))

    async def wait_flags(self, ok, timeout: float = 30, what: str = "dispatcher state") -> dict[str, str]:
        return await until(lambda: (f := self.flags()) and ok(f) and f, timeout, f"{what}: {self.flags()}",
                           interval=0.2)


def contact_ports(workdir: Path) -> list[int]:
    """The gateway ports in the Contact of every 200 OK to an INVITE that SIPp logged (-trace_msg) in `workdir`."""
    ports = []
    for log in workdir.glob("*_messages.log"):
        for block in log.read_text(errors="replace").split("\n\n"):
            if "SIP/2.0 200" in block and "INVITE" in block:
                m = re.search(r"^Contact:.*?:(\d+)[;>]", block, re.M | re.I)
                if m:
                    ports.append(int(m.group(1)))
    return ports


class KamailioRegistrar(_Kamailio):
    """A real kamailio as a registration-based carrier's registrar (tests/kamailio_registrar.cfg) on 127.0.0.1:
    takes every REGISTER, keeps one binding per Contact in memory; `bindings()` reads them (`kamcmd ul.dump`) and
    `registers()` lists the REGISTERs it received, from its log."""

    CFG = Path(__file__).resolve().parent / "kamailio_registrar.cfg"

    def __init__(self, proc: subprocess.Popen, port: int, run_dir: Path, log: Path) -> None:
        self.proc, self.port, self.run_dir, self.log = proc, port, run_dir, log

    @classmethod
    async def start(cls, tmp: Path, *, max_expires: int = 3600) -> KamailioRegistrar:
        port = free_port()
        run_dir = tmp / "registrar-run"
        run_dir.mkdir(exist_ok=True)
        log = tmp / "registrar.log"
        with open(log, "w") as out:   # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                ["kamailio", "-f", str(cls.CFG), "-DD", "-E", "-Y", str(run_dir), *MEMORY_MANAGERS,
                 "-A", f"LISTEN=udp:127.0.0.1:{port}", "-A", f"MAX_EXPIRES={max_expires}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        reg = cls(proc, port, run_dir, log)
        await until(reg._ready, 20, "the registrar's control socket")
        return reg

    def bindings(self) -> dict[str, list[str]]:
        """{address-of-record user: [Contact URI of each live binding]} (expired ones left out)."""
        out = self.kamcmd("ul.dump")
        found: dict[str, list[str]] = {}
        aor, address = None, None
        for line in out.splitlines():
            key, _, value = line.strip().partition(": ")
            if key == "AoR":
                aor = value
                found.setdefault(aor, [])
            elif key == "Address":
                address = value
            elif key == "Expires" and aor is not None and address is not None:
                if value not in ("expired", "deleted"):
                    found[aor].append(address)
                address = None
        return {k: v for k, v in found.items() if v}

    def registers(self) -> list[tuple[str, str, str]]:
        """(To URI, Contact, Expires) of every REGISTER received, oldest first."""
        return re.findall(r"REGISTER (\S+) <([^>]*)> (\S+)", self.log.read_text(errors="replace"))
