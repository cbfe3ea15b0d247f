"""Concurrent Vonage media websockets against a real gateway process: turnaround, frame sizes, CPU per frame.

A gateway is started for the run (its own process via `gateway serve`, echo engine, Vonage carrier only, pinned to
one core); this process plays Vonage for N calls at once on another core, as the Voice API does
(https://developer.vonage.com/en/voice/voice-api/concepts/websockets): the answer webhook
(`GET /vonage/answer`) returns the NCCO whose `connect` names our websocket, its content-type and headers; the
socket's first message is the text `websocket:connected` with that content-type and those headers, then one
binary frame of 16-bit linear PCM every 20 ms (640 B at 16 kHz, 320 B at 8 kHz). Every binary frame the gateway
sends back must be exactly one 20 ms frame. Turnaround = arrival of the i-th echoed frame − sending of the i-th
frame. A step passes when every frame came back, every frame had the right size and p99 turnaround < 20 ms;
N grows until a step fails (or, with `--keep-going`, through every step: the CPU per frame, read from /proc,
still means something on a busy machine where the turnaround does not).
Loopback only; every step is bounded in time.

    python bench/vonage_ws.py                       # writes the vonage_ws section of BENCHMARKS.md
    python bench/vonage_ws.py --steps 10,50 --seconds 3 --no-write
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._gateway_proc import cpu_seconds, free_port, speech_like, start_gateway, stop_gateway, wait_healthy  # noqa: E402
from bench._report import cpu_projection, table, write_section  # noqa: E402
from gateway.cli import run_async  # noqa: E402

NUMBER = "+447700900123"


@dataclass
class StreamResult:
    sent: list[float] = field(default_factory=list)          # send time of frame i
    late_sends: list[float] = field(default_factory=list)    # how late the generator sent frame i
    received: list[float] = field(default_factory=list)      # arrival time of echoed frame i
    bad_frames: int = 0
    error: str | None = None


async def prepare_db(db: str, rate: int) -> None:
    from gateway.secretbox import SecretBox
    from gateway.store import Store
    store = Store(db, SecretBox.load("", os.path.dirname(db)))    # the key `gateway serve --data-dir` will use
    await store.open()
    agent = await store.create_agent({"name": "bench", "engine": "echo", "settings": {}})
    # unsigned webhooks (the explicit opt-out) keep JWT signing out of the generator's CPU; the socket's checks
    # (the NCCO's one-time token) are the same either way
    await store.create_number({"phone_number": NUMBER, "provider": "vonage", "agent_id": agent["id"], "name": "b",
                               "config": {"vonage_audio_rate": rate, "vonage_allow_unsigned_webhooks": True}}, {})
    await store.close()


class Stream:
    def __init__(self, http: aiohttp.ClientSession, port: int, offset_s: float, frame: int) -> None:
        self.http = http
        self.port = port
        self.offset = offset_s
        self.frame = frame
        self.res = StreamResult()
        self.uuid = secrets.token_hex(16)
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def setup(self) -> None:
        params = {"to": NUMBER[1:], "from": "447700900999", "uuid": self.uuid, "conversation_uuid": "CON-bench"}
        async with self.http.get(f"http://127.0.0.1:{self.port}/vonage/answer", params=params) as r:
            ncco = await r.json()
        endpoint = ncco[0]["endpoint"][0]
        path = "/" + endpoint["uri"].split("://", 1)[1].split("/", 1)[1]
        self.ws = await self.http.ws_connect(f"ws://127.0.0.1:{self.port}{path}", max_msg_size=1 << 20)
        await self.ws.send_str(json.dumps({"event": "websocket:connected", "content-type": endpoint["content-type"],
                                           **(endpoint.get("headers") or {})}))

    async def run(self, t0: float, frames: list[bytes]) -> None:
        assert self.ws is not None
        reader = asyncio.create_task(self._read())
        try:
            start = t0 + self.offset
            for i, pcm in enumerate(frames):
                due = start + i * 0.02
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.monotonic()
                self.res.late_sends.append(now - due)
                self.res.sent.append(now)
                await self.ws.send_bytes(pcm)
            deadline = time.monotonic() + 1.0
            while len(self.res.received) < len(frames) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        except Exception as e:
            self.res.error = type(e).__name__
        finally:
            reader.cancel()
            await self.ws.close()        # Vonage closes the socket when the caller hangs up

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.res.received.append(time.monotonic())
                if len(msg.data) != self.frame:
                    self.res.bad_frames += 1


async def run_step(port: int, pid: int, n: int, seconds: float, frames: list[bytes], frame: int) -> dict:
    count = int(seconds / 0.02)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        streams = [Stream(http, port, offset_s=i * 0.02 / n, frame=frame) for i in range(n)]
        sem = asyncio.Semaphore(50)

        async def setup(s: Stream) -> None:
            async with sem:
                await s.setup()
        await asyncio.wait_for(asyncio.gather(*(setup(s) for s in streams)), 30 + n * 0.05)
        await asyncio.sleep(0.3)
        load = os.getloadavg()[0]
        cpu0, w0 = cpu_seconds(pid), time.monotonic()
        t0 = time.monotonic() + 0.1
        await asyncio.wait_for(asyncio.gather(*(s.run(t0, frames[:count]) for s in streams)), seconds + 20)
        cpu_s = cpu_seconds(pid) - cpu0
        cpu = cpu_s / (time.monotonic() - w0)
    turn, late, lost, bad, errors = [], [], 0, 0, 0
    for s in streams:
        r = s.res
        k = min(len(r.sent), len(r.received))
        turn.extend(np.subtract(r.received[:k], r.sent[:k]))
        late.extend(r.late_sends)
        lost += max(0, len(r.sent) - len(r.received))
        bad += r.bad_frames
        errors += r.error is not None
    t = np.array(turn) * 1000 if turn else np.array([float("nan")])
    lt = np.array(late) * 1000 if late else np.array([0.0])
    echoed = sum(len(s.res.received) for s in streams)
    await asyncio.sleep(2.0)   # let the gateway close the calls (call-log writes, webhooks) before the next step
    return {"n": n, "frames": n * count, "echoed": echoed, "p50": float(np.percentile(t, 50)),
            "p99": float(np.percentile(t, 99)), "max": float(t.max()), "lost": lost, "bad": bad, "errors": errors,
            "cpu": cpu * 100, "us_per_frame": cpu_s / echoed * 1e6 if echoed else float("nan"),
            "gen_late_p99": float(np.percentile(lt, 99)), "load": load}


async def main_async(args: argparse.Namespace) -> list[dict]:
    frame = args.rate // 50 * 2
    pcm = speech_like(max(args.seconds, 1.0) + 1, args.rate)
    frames = [pcm[i:i + frame] for i in range(0, len(pcm) - frame + 1, frame)]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-vonage-ws-") as tmp:
        await prepare_db(os.path.join(tmp, "gw.db"), args.rate)
        port = free_port()
        cores = sorted(os.sched_getaffinity(0))
        gw_core, gen_core = (cores[0], cores[1]) if len(cores) >= 2 and not args.no_pin else (None, None)
        if gen_core is not None:
            os.sched_setaffinity(0, {gen_core})
        proc = start_gateway(tmp, port, gw_core, "vonage")
        try:
            await wait_healthy(port, proc)
            deadline = time.monotonic() + args.budget
            for n in args.steps:
                if time.monotonic() > deadline:
                    print(f"time budget of {args.budget:g} s used up; stopping before N={n}")
                    break
                r = await run_step(port, proc.pid, n, args.seconds, frames, frame)
                r["ok"] = r["bad"] == 0 and r["lost"] == 0 and r["errors"] == 0 and r["p99"] < 20.0
                results.append(r)
                print(f"N={n:4d}  p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  max {r['max']:7.2f} ms  "
                      f"lost {r['lost']}  bad {r['bad']}  cpu {r['cpu']:5.1f} %  {r['us_per_frame']:.1f} us/frame  "
                      f"generator late p99 {r['gen_late_p99']:.1f} ms  load {r['load']:.1f}  "
                      f"{'ok' if r['ok'] else 'FAIL'}", flush=True)
                if not r["ok"] and not args.keep_going:
                    break
        finally:
            stop_gateway(proc)
    return results


def report(results: list[dict], args: argparse.Namespace) -> str:
    best = max((r["n"] for r in results if r["ok"]), default=0)
    rows = [[r["n"], r["frames"], r["echoed"], f"{r['p50']:.2f}", f"{r['p99']:.2f}", f"{r['max']:.1f}", r["lost"],
             r["bad"], f"{r['cpu']:.0f} %", f"{r['cpu'] / r['n']:.2f} %", f"{r['us_per_frame']:.1f}",
             f"{r['gen_late_p99']:.1f}", f"{r['load']:.1f}", "pass" if r["ok"] else "fail"] for r in results]
    projection = cpu_projection(results, "per 20 ms frame")
    return (f"Largest N with every frame echoed at 20 ms size and p99 turnaround < 20 ms: **{best} concurrent "
            f"streams** ({'not pinned' if args.no_pin else 'gateway pinned to one core'}).{projection}\n\n"
            + table(["streams", "frames in", "frames out", "p50 ms", "p99 ms", "max ms", "lost", "wrong size",
                     "gateway CPU (1 core)", "CPU per stream", "µs per frame", "generator late p99 ms", "load avg",
                     "verdict"], rows)
            + f"\n\nEach stream: `GET /vonage/answer` (the NCCO), then Vonage's media websocket: "
              f"`websocket:connected` with content-type audio/l16;rate={args.rate}, one binary 20 ms L16 frame "
              f"({args.rate // 50 * 2} B) every 20 ms for {args.seconds:g} s; echo engine at 16 kHz"
              f"{' (no resampling at 16 kHz)' if args.rate == 16000 else ' (every frame resampled up and down)'}. "
              "Turnaround = arrival of the i-th echoed frame − sending of the i-th frame. µs per frame = the "
              "gateway process's CPU time (/proc) over the step ÷ frames echoed, one frame in and one out each: "
              "unlike the turnaround it carries over from a busy machine. The generator's own lateness is shown so "
              "an overloaded generator cannot pass for a slow gateway; the 1-minute load average shows how busy "
              "the machine was (other processes share these cores).")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="10,50,100,200,300", type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--seconds", type=float, default=5.0, help="media seconds per step")
    p.add_argument("--rate", type=int, default=16000, choices=(8000, 16000), help="the number's vonage_audio_rate")
    p.add_argument("--budget", type=float, default=180.0, help="total seconds before no new step starts")
    p.add_argument("--keep-going", action="store_true", help="run every step even after one fails")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    p.add_argument("--no-pin", action="store_true", help="do not pin gateway and generator to separate cores")
    args = p.parse_args()
    results = run_async(main_async(args))  # uvloop when installed, as `gateway serve`
    body = report(results, args)
    print(body)
    if not args.no_write and results:
        write_section("vonage_ws", "Vonage media websocket: concurrent streams per core", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
