"""Does the dispatch queue hold a trunk's max_cps? A bulk call of cps × seconds (+ 3 %) contacts on a SIP number
with `max_cps`, dialled by one `gateway serve` process against SIPp as the callee (UAS answering 486 Busy Here, so
every call is one INVITE / 486 / ACK and the trunk's pace is the only limit), on loopback, bounded in calls and
time. Measured from SIPp's own per-second counters (INVITEs it received) and from the call log (when each call
started): the rate over the window, the busiest and quietest second, and the most calls in any 1 s window.

    python bench/queue_pace.py                      # 300 CPS for 60 s, writes its section of BENCHMARKS.md
    python bench/queue_pace.py --cps 50 --seconds 10 --no-write
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._gateway_proc import cpu_seconds, free_port, wait_healthy  # noqa: E402
from bench._report import table, write_section  # noqa: E402
from gateway.loadtest.sipp import run_sipp  # noqa: E402

KEY = "bench"
SCENARIO = ROOT / "sip-test-configs" / "uas_busy.xml"


def start_gateway(tmp: str, http: int, sip: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GATEWAY_CARRIERS="sip", GATEWAY_RTP_PORT_MIN="30000", GATEWAY_RTP_PORT_MAX="39998",
               PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--http-port", str(http),
         "--sip-port", str(sip), "--db", os.path.join(tmp, "gw.db"), "--data-dir", tmp, "--engine", "echo",
         "--api-key", KEY, "--max-calls", "5000", "--log-level", "WARNING"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "gateway.log"), "w"))


async def api(http: aiohttp.ClientSession, base: str, method: str, path: str, body: dict | None = None) -> dict:
    async with http.request(method, f"{base}/api/v1{path}", json=body,
                            headers={"Authorization": f"Bearer {KEY}"}) as r:
        data = await r.json()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {data}")
        return data


def invites_received(tmp: str) -> list[float]:
    """When SIPp received each call's first INVITE (epoch s), from its message trace (-trace_msg): the wire's view.
    Retransmissions (same Call-ID; the gateway's timer A re-sends INVITEs SIPp no longer answers once it has run
    its `-m` calls) are not new calls and are left out."""
    first: dict[str, float] = {}
    stamp, in_invite = 0.0, False
    for path in Path(tmp).glob("*_messages.log"):
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("-----"):
                    text = line.strip("- \n").replace("\t", " ")
                    try:
                        stamp = datetime.strptime(text[:26], "%Y-%m-%d %H:%M:%S.%f").timestamp()
                    except ValueError:
                        continue
                    in_invite = False
                elif line.startswith("INVITE "):
                    in_invite = True
                elif in_invite and line.lower().startswith(("call-id:", "i:")):
                    first.setdefault(line.split(":", 1)[1].strip(), stamp)
                    in_invite = False
    return sorted(first.values())


def max_in_window(times: list[float], width: float = 1.0) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + width) - i for i, t in enumerate(times)), default=0)


async def run(cps: float, seconds: float) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-queue-")
    http_port, sip_port, uas_port = free_port(), free_port(), free_port()
    contacts = int(cps * seconds * 1.03) + 10
    gw = start_gateway(tmp, http_port, sip_port)
    uas = asyncio.ensure_future(run_sipp("127.0.0.1:9", [
        "-sf", str(SCENARIO), "-p", str(uas_port), "-m", str(contacts), "-timeout", f"{int(seconds + 60)}s",
        "-max_recv_loops", "5000", "-max_sched_loops", "5000", "-trace_msg"], deadline_s=seconds + 90, cwd=tmp))
    base = f"http://127.0.0.1:{http_port}"
    try:
        await wait_healthy(http_port, gw)
        async with aiohttp.ClientSession() as http:
            agent = await api(http, base, "POST", "/agents", {"name": "bench", "engine": "echo"})
            agent_id = (agent.get("agent") or agent)["id"]
            num = (await api(http, base, "POST", "/phone_number/import/sip", {
                "phone_number": "+15550001111", "sip_host": "127.0.0.1", "sip_port": uas_port,
                "sip_trunk_name": "bench", "auth_type": "ip", "allowed_ips": ["127.0.0.1"], "max_cps": cps,
                "agent_id": agent_id}))["phone_number"]
            bulks = []
            for first in range(0, contacts, 9000):   # bulk calls of ≤ 9000 contacts, paused until all are in
                rows = [{"phone_number": f"+1555{i:07d}"} for i in range(first, min(contacts, first + 9000))]
                bulk = (await api(http, base, "POST", "/calls/bulk_call/create", {
                    "name": "pace", "phone_number_id": num["id"], "contact_list": rows}))["bulk_call_id"]
                await api(http, base, "PUT", f"/calls/bulk_call/{bulk}", {"action": "pause"})
                bulks.append(bulk)
            for b in bulks:
                await api(http, base, "PUT", f"/calls/bulk_call/{b}", {"action": "resume"})
            load0 = os.getloadavg()[0]
            t0 = time.monotonic()
            cpu0 = cpu_seconds(gw.pid) or 0.0
            await asyncio.sleep(seconds)
            cpu = ((cpu_seconds(gw.pid) or 0.0) - cpu0) / (time.monotonic() - t0)
            for b in bulks:
                await api(http, base, "PUT", f"/calls/bulk_call/{b}", {"action": "cancel"})
    finally:
        gw.terminate()
        try:
            gw.wait(timeout=20)
        except subprocess.TimeoutExpired:
            gw.kill()
    result = await uas
    placed = invites_received(tmp)       # the callee's clock: when each INVITE arrived
    span = placed[-1] - placed[0] if len(placed) > 1 else 0.0
    return {"cps": cps, "seconds": seconds, "placed": len(placed), "span": span,
            "rate": (len(placed) - 1) / span if span else 0.0, "max_1s": max_in_window(placed),
            "window_rate": max_in_window(placed, seconds) / seconds,
            "max_5s": max_in_window(placed, 5.0) / 5, "sipp_received": result.stats.created, "tmp": tmp,
            "cpu": cpu, "load0": load0, "load": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cps", type=float, default=300.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    a = p.parse_args()
    r = asyncio.run(run(a.cps, a.seconds))
    err = (r["window_rate"] - a.cps) / a.cps * 100
    rows = [["max_cps of the trunk", f"{a.cps:g}"], ["window", f"{a.seconds:g} s"],
            ["calls at SIPp (first INVITE per Call-ID)", f"{r['placed']} in {r['span']:.2f} s"],
            [f"rate over the busiest {a.seconds:g} s", f"{r['window_rate']:.1f} CPS ({err:+.1f} % of the limit)"],
            ["rate: (calls − 1) / first to last", f"{r['rate']:.1f} CPS"],
            ["busiest 5 s window, per second", f"{r['max_5s']:.1f}"],
            ["busiest 1 s window", r["max_1s"]],
            ["calls SIPp counted (its statistics)", r["sipp_received"]],
            ["gateway CPU over the window", f"{r['cpu'] * 100:.0f} % of one core"],
            ["machine load average (1 min) at the start / the end",
             f"{r['load0']:.1f} / {r['load']:.1f} on {os.cpu_count()} cores"]]
    body = table(["", "value"], rows) + (
        f"\n\nVerdict: the rate over {a.seconds:g} s is {'within' if abs(err) <= 5 else 'OUTSIDE'} 5 % of the trunk's "
        "limit. One "
        "`gateway serve` process (SQLite, uvloop when installed) dials a bulk call through the dispatch queue; SIPp "
        "answers every INVITE 486 (no media), so the pace is the only limit. Times are when SIPp received each "
        "INVITE (its -trace_msg log), i.e. the callee's view of the trunk's pace.")
    print(body)
    if not a.no_write:
        write_section("queue_pace", "Dispatch queue: holding a trunk's max_cps", body,
                      command=f"python bench/queue_pace.py --cps {a.cps:g} --seconds {a.seconds:g}")


if __name__ == "__main__":
    main()
