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

from bench._gateway_proc import free_port, wait_healthy  # noqa: E402
from bench._report import table, write_section  # noqa: E402
from gateway.loadtest.sipp import SippStats, run_sipp  # noqa: E402

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


def max_in_window(times: list[float], width: float = 1.0) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + width) - i for i, t in enumerate(times)), default=0)


async def run(cps: float, seconds: float) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-queue-")
    http_port, sip_port, uas_port = free_port(), free_port(), free_port()
    contacts = int(cps * seconds * 1.03) + 10
    per_second: list[tuple[float, int]] = []

    def progress(s: SippStats) -> None:
        per_second.append((time.monotonic(), s.created))

    gw = start_gateway(tmp, http_port, sip_port)
    uas = asyncio.ensure_future(run_sipp("127.0.0.1:9", [
        "-sf", str(SCENARIO), "-p", str(uas_port), "-m", str(contacts), "-timeout", f"{int(seconds + 60)}s",
        "-max_recv_loops", "5000", "-max_sched_loops", "5000"], deadline_s=seconds + 90, cwd=tmp,
        on_progress=progress))
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
            bulk = None
            started = time.monotonic()
            step = 9000
            for first in range(0, contacts, step):   # one paused bulk call, filled in parts, then resumed
                rows = [{"phone_number": f"+1555{i:07d}"} for i in range(first, min(contacts, first + step))]
                if bulk is None:
                    bulk = (await api(http, base, "POST", "/calls/bulk_call/create", {
                        "name": "pace", "phone_number_id": num["id"], "contact_list": rows}))["bulk_call_id"]
                    await api(http, base, "PUT", f"/calls/bulk_call/{bulk}", {"action": "pause"})
                else:
                    extra = (await api(http, base, "POST", "/calls/bulk_call/create", {
                        "name": "pace", "phone_number_id": num["id"], "contact_list": rows}))["bulk_call_id"]
                    await api(http, base, "PUT", f"/calls/bulk_call/{extra}", {"action": "pause"})
                    bulk = [bulk, extra] if not isinstance(bulk, list) else [*bulk, extra]
            bulks = bulk if isinstance(bulk, list) else [bulk]
            del started
            for b in bulks:
                await api(http, base, "PUT", f"/calls/bulk_call/{b}", {"action": "resume"})
            t0 = time.monotonic()
            await asyncio.sleep(seconds)
            for b in bulks:
                await api(http, base, "PUT", f"/calls/bulk_call/{b}", {"action": "cancel"})
            placed = []
            for b in bulks:
                page = 1
                while True:
                    logs = await api(http, base, "GET", f"/calls/logs?bulk_call_id={b}&pagesize=150&pageno={page}")
                    placed += [datetime.fromisoformat(r["created_at"]).timestamp() for r in logs["call_log_data"]]
                    if page * 150 >= logs["total"]:
                        break
                    page += 1
    finally:
        gw.terminate()
        try:
            gw.wait(timeout=20)
        except subprocess.TimeoutExpired:
            gw.kill()
    result = await uas
    placed.sort()
    window = [t for t in placed if t < placed[0] + seconds] if placed else []
    sipp = [(t - t0, n) for t, n in per_second if t >= t0]
    rates = [b[1] - a[1] for a, b in zip(sipp, sipp[1:], strict=False) if 1 <= b[0] <= seconds]
    return {"cps": cps, "seconds": seconds, "placed": len(placed), "in_window": len(window),
            "rate": len(window) / seconds, "max_1s": max_in_window(placed),
            "sipp_received": result.stats.created, "sipp_min_s": min(rates, default=0),
            "sipp_max_s": max(rates, default=0), "sipp_failed_other": result.stats.failed, "tmp": tmp}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cps", type=float, default=300.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    a = p.parse_args()
    r = asyncio.run(run(a.cps, a.seconds))
    err = (r["rate"] - a.cps) / a.cps * 100
    rows = [["max_cps of the trunk", f"{a.cps:g}"], ["window", f"{a.seconds:g} s"],
            ["calls started in the window (call log)", r["in_window"]],
            ["rate over the window", f"{r['rate']:.1f} CPS ({err:+.1f} % of the limit)"],
            ["most calls in any 1 s (call log)", r["max_1s"]],
            ["INVITEs per second at SIPp: min / max", f"{r['sipp_min_s']} / {r['sipp_max_s']}"],
            ["INVITEs SIPp received in all", r["sipp_received"]]]
    body = table(["", "value"], rows) + (
        f"\n\nVerdict: the rate is {'within' if abs(err) <= 5 else 'OUTSIDE'} 5 % of the trunk's limit. One "
        "`gateway serve` process (SQLite, uvloop when installed) dials a bulk call through the dispatch queue; SIPp "
        "answers every INVITE 486 (no media), so the pace is the only limit. Per-second counts at SIPp include "
        "its own one-second sampling jitter.")
    print(body)
    if not a.no_write:
        write_section("queue_pace", "Dispatch queue: holding a trunk's max_cps", body,
                      command=f"python bench/queue_pace.py --cps {a.cps:g} --seconds {a.seconds:g}")


if __name__ == "__main__":
    main()
