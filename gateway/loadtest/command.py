"""`gateway loadtest sip`: SIPp against a gateway (started for the run, or given by address), live progress,
and a summary from SIPp's own statistics plus the gateway's CPU, RSS and RTP counters."""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from ..procstat import ProcessSampler
from .sipp import SippResult, SippStats, check_loopback, run_sipp

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "sip-test-configs"
DEFAULT_NUMBER = "+15550100000"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("loadtest", help="load-test a gateway with SIPp (loopback only)")
    lsub = p.add_subparsers(dest="loadtest_kind", required=True)
    s = lsub.add_parser("sip", help="SIP calls with G.711 RTP from SIPp")
    s.add_argument("--rate", type=float, default=10, help="calls per second (default 10)")
    s.add_argument("--calls", type=int, default=100, help="total calls (default 100)")
    s.add_argument("--concurrent", type=int, default=100, help="max simultaneous calls (default 100)")
    s.add_argument("--duration", type=float, default=2.0, help="seconds each call is held (default 2)")
    s.add_argument("--target", help="HOST:PORT of a running gateway's SIP port (127.x only); default: start one")
    s.add_argument("--number", default=DEFAULT_NUMBER, help="dialled number, imported with an echo agent "
                   "when the gateway is started for the run")
    s.add_argument("--scenario", help="SIPp scenario XML (default: sip-test-configs/uac_pcma_echo.xml with RTP, "
                   "or SIPp's built-in uac with --no-rtp)")
    s.add_argument("--no-rtp", action="store_true", help="signalling only")
    s.add_argument("--http-url", help="the running gateway's HTTP base URL (for /metrics), with --target")
    s.add_argument("--gateway-pid", type=int, help="PID of the running gateway (CPU/RSS), with --target")
    s.add_argument("--max-failed-pct", type=float, default=0.0, help="exit 1 above this failure percentage")
    s.add_argument("--timeout", type=float, help="hard deadline in seconds (default: derived from the run)")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int, kind: int = socket.SOCK_DGRAM) -> bool:
    """Could `port` of 127.0.0.1 be bound for `kind` (UDP or TCP) a moment ago?"""
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(count: int) -> int:
    """A port P such that P … P + count - 1 were all free a moment ago on 127.0.0.1 for UDP and TCP: a gateway's
    SIP port (it listens on both) and, with `serve --workers N`, its workers' `P + k` (gateway/workers.py). A port
    free for UDP alone may be a TCP listener's, or linger in TIME_WAIT, and the worker would then fail to bind."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        if port + count <= 65536 and all(port_free(p, kind) for p in range(port, port + count)
                                         for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)):
            return port
    raise RuntimeError(f"no {count} free ports in a row")


@dataclass
class LocalGateway:
    proc: asyncio.subprocess.Process
    http_url: str
    sip_target: str
    api_key: str
    data_dir: str


#: how long the gateway it starts may take to be ready: the runtime's imports alone took 3-7 s on a busy 2-core box,
#: and the 10 s this used to allow failed there (leaving that gateway running)
START_TIMEOUT = 60.0


async def start_gateway(number: str) -> LocalGateway:
    """Start `gateway serve` on free loopback ports with the echo engine and one SIP number for SIPp; stopped again
    when it does not come up (RuntimeError says why)."""
    data_dir = tempfile.mkdtemp(prefix="gw-loadtest-")
    http_port, sip_port = free_port(), free_ports(1)
    api_key = secrets.token_urlsafe(16)
    env = {**os.environ, "GATEWAY_RTP_PORT_MIN": "30000", "GATEWAY_RTP_PORT_MAX": "39998"}
    with open(os.path.join(data_dir, "gateway.log"), "wb") as log:   # the child keeps its own copy of the descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--http-port", str(http_port),
            "--sip-port", str(sip_port), "--engine", "echo", "--data-dir", data_dir, "--api-key", api_key,
            "--max-calls", "5000", "--log-level", "WARNING", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=log)
    gw = LocalGateway(proc, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{sip_port}", api_key, data_dir)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as http:
            deadline = asyncio.get_running_loop().time() + START_TIMEOUT
            while True:
                try:
                    async with http.get(gw.http_url + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if proc.returncode is not None:
                    raise RuntimeError(f"the gateway exited during start-up; see {data_dir}/gateway.log")
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"the gateway was not ready within {START_TIMEOUT:g} s; see "
                                       f"{data_dir}/gateway.log")
                await asyncio.sleep(0.1)
            await provision(http, gw.http_url, number)
    except BaseException:
        await stop_gateway(proc)
        raise
    return gw


async def stop_gateway(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (it drains: no calls are left by then), SIGKILL after 10 s."""
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def provision(http: aiohttp.ClientSession, base: str, number: str) -> None:
    """An echo agent and a SIP number that accepts SIPp's calls from 127.0.0.1 by IP allow-list."""
    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with http.post(base + "/api/v1" + path, json=body) as r:
            data: dict[str, Any] = await r.json()
            if r.status >= 300:
                raise RuntimeError(f"{path}: {r.status} {data.get('error', data)}")
            return data

    agent = await post("/agents", {"name": "loadtest echo", "engine": "echo"})
    agent_id = (agent.get("agent") or agent)["id"]
    num = await post("/phone_number/import/sip", {
        "phone_number": number, "sip_host": "127.0.0.1", "sip_trunk_name": "loadtest", "name": "loadtest",
        "auth_type": "ip", "allowed_ips": ["127.0.0.1"]})
    imported = num["phone_number"] if isinstance(num.get("phone_number"), dict) else num
    number_id = imported["id"]
    await post("/phone_number/attach", {"phone_number_id": number_id, "agent_id": agent_id})


async def read_metrics(http_url: str | None) -> dict[str, float]:
    """The gateway's Prometheus counters, summed over labels (RTP packets, frames, active calls)."""
    if not http_url:
        return {}
    try:
        async with aiohttp.ClientSession() as http, http.get(http_url + "/metrics") as r:
            return parse_metrics(await r.text())
    except aiohttp.ClientError:
        return {}


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition → {metric name: value summed over its labels}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def sipp_args(args: argparse.Namespace, number: str) -> list[str]:
    user = number.lstrip("+")
    common = ["-s", user, "-r", str(args.rate), "-m", str(args.calls), "-l", str(args.concurrent),
              "-timeout", f"{int(timeout_for(args))}s", "-timeout_error", "-max_recv_loops", "10000",
              "-aa", "-p", str(free_port(socket.SOCK_DGRAM)), "-mp", str(free_port(socket.SOCK_DGRAM) & ~1)]
    if args.scenario:
        return ["-sf", args.scenario, "-d", str(int(args.duration * 1000)), *common]
    if args.no_rtp:
        return ["-sn", "uac", "-d", str(int(args.duration * 1000)), *common]
    return ["-sf", str(SCENARIO_DIR / "uac_pcma_echo.xml"), "-d", str(int(args.duration * 1000)), *common]


def timeout_for(args: argparse.Namespace) -> float:
    if args.timeout:
        return float(args.timeout)
    return float(args.calls / max(args.rate, 0.1) + args.duration + 30)


def summary_table(result: SippResult, sampler: ProcessSampler | None, wall: float,
                  before: dict[str, float], after: dict[str, float]) -> Table:
    s = result.stats
    t = Table(title="SIP load test (from SIPp's statistics)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("calls attempted", str(s.created))
    t.add_row("calls successful", str(s.successful))
    t.add_row("calls failed", str(s.failed) + (f"  {s.failed_breakdown}" if s.failed_breakdown else ""))
    t.add_row("retransmissions", str(s.retransmissions))
    t.add_row("CPS achieved", f"{s.call_rate:.1f}")
    for p in (50, 90, 99):
        v = result.percentile(p)
        t.add_row(f"response time p{p} (ms)", "-" if v is None else f"{v:.0f}")
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    for key, label in (("gateway_rtp_packets_received_total", "RTP packets received by gateway"),
                       ("gateway_rtp_packets_sent_total", "RTP packets sent by gateway"),
                       ("gateway_rtp_packets_lost_total", "RTP packets lost (gateway side)"),
                       ("gateway_dropped_frames_total", "frames dropped (bus)")):
        if key in after:
            t.add_row(label, f"{delta.get(key, 0):.0f}")
    if sampler is not None and sampler.samples:
        share = 100 * sampler.cpu_used / max(wall, 1e-6)
        t.add_row("gateway CPU", f"{sampler.cpu_used:.2f} s ({share:.0f} % of a core)")
        t.add_row("gateway peak RSS", f"{sampler.rss_peak / 2**20:.0f} MiB")
    t.add_row("SIPp", "killed at deadline" if result.killed else f"exit {result.returncode}")
    return t


async def run(args: argparse.Namespace) -> int:
    console = Console()
    local: LocalGateway | None = None
    try:
        if args.target:
            try:
                check_loopback(args.target)
            except ValueError as e:
                print(f"gateway: loadtest: --target: {e}", file=sys.stderr)
                return 2
            target, http_url, pid = args.target, args.http_url, args.gateway_pid
        else:
            try:
                local = await start_gateway(args.number)
            except RuntimeError as e:
                print(f"gateway: loadtest: {e}", file=sys.stderr)
                return 1
            target, http_url, pid = local.sip_target, local.http_url, local.proc.pid
            console.print(f"started gateway pid {pid}: SIP {target}, HTTP {http_url}")
        sampler = ProcessSampler(pid) if pid else None
        if sampler:
            sampler.start()
        before = await read_metrics(http_url)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with Progress(TextColumn("[bold]calls"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[detail]}"), console=console) as progress:
            task = progress.add_task("sipp", total=args.calls, detail="")

            def on_progress(s: SippStats) -> None:
                progress.update(task, completed=s.successful + s.failed,
                                detail=f"ok {s.successful}  failed {s.failed}  live {s.current}  {s.call_rate:.1f} cps")
                if sampler:
                    sampler.sample()

            result = await run_sipp(target, sipp_args(args, args.number), deadline_s=timeout_for(args) + 15,
                                    on_progress=on_progress)
        wall = loop.time() - t0
        if sampler:
            sampler.sample()
        after = await read_metrics(http_url)
        console.print(summary_table(result, sampler, wall, before, after))
        if result.errors and result.stats.failed:
            console.print(f"[yellow]SIPp errors (tail):[/]\n{result.errors[-1500:]}")
        s = result.stats
        failed_pct = 100.0 * (s.failed + max(0, args.calls - s.successful - s.failed)) / max(args.calls, 1)
        if result.killed or failed_pct > args.max_failed_pct:
            console.print(f"[red]FAILED[/]: {failed_pct:.2f} % of {args.calls} calls did not succeed "
                          f"(threshold {args.max_failed_pct} %)")
            return 1
        return 0
    finally:
        if local is not None:
            await stop_gateway(local.proc)
