"""Concurrent Exotel Voicebot streams against a real gateway process: added audio delay, chunk rule, CPU.

A gateway is started for the run (its own process via `gateway serve`, echo engine, Exotel carrier only, pinned to
one core); this process plays Exotel for N calls at once on another core: a websocket speaking the Voicebot
protocol (`connected`, `start` with media_format slin 8 kHz, then one 100 ms `media` chunk of 1600 B every 100 ms in
real time, as Exotel does). Everything the gateway sends back is checked against Exotel's chunk rule (≥ 3.2 KB,
≤ 100 KB, multiple of 320 B). Delay of an audio byte = arrival of the echoed chunk holding it − sending of the input
chunk holding it, so it includes the wait that the 3.2 KB minimum imposes (200 ms of 8 kHz PCM per chunk). A step
passes when every chunk is valid, no audio is lost and p99 delay < 300 ms; N grows until a step fails.
Loopback only; every step is bounded in time.

    python bench/exotel_ws.py                       # writes the exotel_ws section of BENCHMARKS.md
    python bench/exotel_ws.py --steps 10,50 --seconds 3 --no-write
"""
from __future__ import annotations

import argparse
import asyncio
import base64
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

EXOPHONE = "+918047491899"
ACCOUNT = "benchacct"
CHUNK = 1600            # 100 ms of 8 kHz PCM16, what Exotel sends


@dataclass
class StreamResult:
    sent: list[float] = field(default_factory=list)       # send time of input chunk i
    arrivals: list[tuple[float, int]] = field(default_factory=list)   # (time, cumulative echoed bytes after it)
    sizes: list[int] = field(default_factory=list)
    error: str | None = None


async def prepare_db(db: str) -> None:
    from gateway.secretbox import SecretBox
    from gateway.store import Store
    store = Store(db, SecretBox.load("", os.path.dirname(db)))    # the key `gateway serve --data-dir` will use
    await store.open()
    agent = await store.create_agent({"name": "bench", "engine": "echo", "settings": {}})
    await store.create_number({"phone_number": EXOPHONE, "provider": "exotel", "agent_id": agent["id"],
                               "config": {"exotel_subdomain": "api.in.exotel.com", "exotel_account_sid": ACCOUNT}},
                              {"exotel_api_key": "k", "exotel_api_token": "t"})
    await store.close()


class Stream:
    def __init__(self, http: aiohttp.ClientSession, port: int, offset_s: float) -> None:
        self.http = http
        self.port = port
        self.offset = offset_s
        self.res = StreamResult()
        self.sid = "MZ" + secrets.token_hex(12)
        self.call_sid = "CA" + secrets.token_hex(12)
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def setup(self) -> None:
        auth = "Basic " + base64.b64encode(b"k:t").decode()     # the ExoPhone's API key/token, as Exotel sends them
        self.ws = await self.http.ws_connect(f"ws://127.0.0.1:{self.port}/exotel/media", max_msg_size=1 << 20,
                                             headers={"Authorization": auth})
        await self.ws.send_str('{"event":"connected"}')
        await self.ws.send_str(json.dumps({"event": "start", "sequence_number": "1", "stream_sid": self.sid,
                                           "start": {"stream_sid": self.sid, "call_sid": self.call_sid,
                                                     "account_sid": ACCOUNT, "from": "09876543210",
                                                     "to": "08047491899", "custom_parameters": {},
                                                     "media_format": {"encoding": "audio/x-raw",
                                                                      "sample_rate": "8000", "bit_rate": "16"}}}))

    async def run(self, t0: float, chunks: list[str]) -> None:
        reader = asyncio.create_task(self._read())
        head = '{"event":"media","stream_sid":"%s","media":{"chunk":"' % self.sid
        try:
            start = t0 + self.offset
            for i, payload in enumerate(chunks):
                due = start + i * 0.1
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.res.sent.append(time.monotonic())
                await self.ws.send_str(head + f'{i + 1}","timestamp":"{i * 100}","payload":"{payload}"}}}}')
            want = len(chunks) * CHUNK
            deadline = time.monotonic() + 2.0
            while (not self.res.arrivals or self.res.arrivals[-1][1] < want) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await self.ws.send_str('{"event":"stop","stream_sid":"%s","stop":{"call_sid":"%s","reason":"callended"}}'
                                   % (self.sid, self.call_sid))
        except Exception as e:
            self.res.error = type(e).__name__
        finally:
            reader.cancel()
            await self.ws.close()

    async def _read(self) -> None:
        total = 0
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT or '"event":"media"' not in msg.data:
                continue
            t = time.monotonic()
            n = len(base64.b64decode(msg.data.rsplit('"payload":"', 1)[1].split('"', 1)[0]))
            total += n
            self.res.sizes.append(n)
            self.res.arrivals.append((t, total))


def delays(res: StreamResult) -> list[float]:
    """For every 20 ms of input audio: when its echo arrived minus when it was sent."""
    out = []
    if not res.arrivals:
        return out
    ends = np.array([a[1] for a in res.arrivals])
    times = np.array([a[0] for a in res.arrivals])
    for i, sent in enumerate(res.sent):
        for k in range(5):                                   # five 20 ms frames per input chunk
            pos = i * CHUNK + (k + 1) * 320                  # the byte just after this frame
            j = int(np.searchsorted(ends, pos))
            if j < len(ends):
                out.append(times[j] - sent)
    return out


async def run_step(port: int, pid: int, n: int, seconds: float, chunks: list[str]) -> dict:
    count = int(seconds / 0.1)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        streams = [Stream(http, port, offset_s=i * 0.1 / n) for i in range(n)]
        sem = asyncio.Semaphore(50)

        async def setup(s: Stream) -> None:
            async with sem:
                await s.setup()
        await asyncio.wait_for(asyncio.gather(*(setup(s) for s in streams)), 30 + n * 0.05)
        await asyncio.sleep(0.3)
        load = os.getloadavg()[0]
        cpu0, w0 = cpu_seconds(pid), time.monotonic()
        t0 = time.monotonic() + 0.1
        await asyncio.wait_for(asyncio.gather(*(s.run(t0, chunks[:count]) for s in streams)), seconds + 20)
        cpu_s = cpu_seconds(pid) - cpu0
        cpu = cpu_s / (time.monotonic() - w0)
    d, bad, lost, errors, sizes, echoed = [], 0, 0, 0, [], 0
    for s in streams:
        r = s.res
        d.extend(delays(r))
        bad += sum(1 for z in r.sizes if z % 320 or z < 3200 or z > 100_000)
        got = r.arrivals[-1][1] if r.arrivals else 0
        echoed += got
        lost += max(0, count * CHUNK - got - 320)            # a resampler may hold back a few samples
        errors += r.error is not None
        sizes.extend(r.sizes)
    arr = np.array(d) * 1000 if d else np.array([float("nan")])
    await asyncio.sleep(1.0)
    return {"n": n, "chunks_in": n * count, "chunks_out": len(sizes), "p50": float(np.percentile(arr, 50)),
            "p99": float(np.percentile(arr, 99)), "max": float(arr.max()), "bad": bad, "lost": lost,
            "errors": errors, "cpu": cpu * 100,
            "us_per_frame": cpu_s / (echoed / 320) * 1e6 if echoed else float("nan"),     # 320 B: 20 ms of slin
            "size_p50": int(np.median(sizes)) if sizes else 0, "load": load}


async def main_async(args: argparse.Namespace) -> list[dict]:
    pcm = speech_like(max(args.seconds, 1.0) + 1)
    chunks = [base64.b64encode(pcm[i:i + CHUNK]).decode() for i in range(0, len(pcm) - CHUNK + 1, CHUNK)]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-exotel-ws-") as tmp:
        await prepare_db(os.path.join(tmp, "gw.db"))
        port = free_port()
        cores = sorted(os.sched_getaffinity(0))
        gw_core, gen_core = (cores[0], cores[1]) if len(cores) >= 2 and not args.no_pin else (None, None)
        if gen_core is not None:
            os.sched_setaffinity(0, {gen_core})
        proc = start_gateway(tmp, port, gw_core, "exotel")
        try:
            await wait_healthy(port, proc)
            deadline = time.monotonic() + args.budget
            for n in args.steps:
                if time.monotonic() > deadline:
                    print(f"time budget of {args.budget:g} s used up; stopping before N={n}")
                    break
                r = await run_step(port, proc.pid, n, args.seconds, chunks)
                r["ok"] = r["bad"] == 0 and r["lost"] == 0 and r["errors"] == 0 and r["p99"] < 300.0
                results.append(r)
                print(f"N={n:4d}  delay p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms  max {r['max']:6.1f} ms  "
                      f"bad chunks {r['bad']}  lost {r['lost']} B  cpu {r['cpu']:5.1f} %  "
                      f"{r['us_per_frame']:.1f} us/frame  "
                      f"load {r['load']:.1f}  "
                      f"{'ok' if r['ok'] else 'FAIL'}", flush=True)
                if not r["ok"] and not args.keep_going:
                    break
        finally:
            stop_gateway(proc)
    return results


def report(results: list[dict], args: argparse.Namespace) -> str:
    best = max((r["n"] for r in results if r["ok"]), default=0)
    rows = [[r["n"], r["chunks_in"], r["chunks_out"], r["size_p50"], f"{r['p50']:.1f}", f"{r['p99']:.1f}",
             f"{r['max']:.1f}", r["bad"], r["lost"], f"{r['cpu']:.0f} %", f"{r['cpu'] / r['n']:.2f} %",
             f"{r['us_per_frame']:.1f}", f"{r['load']:.1f}", "pass" if r["ok"] else "fail"] for r in results]
    projection = cpu_projection(results, "per 20 ms of audio")
    return (f"Largest N with every chunk inside Exotel's rule, no audio lost and p99 delay < 300 ms: "
            f"**{best} concurrent streams** ({'not pinned' if args.no_pin else 'gateway pinned to one core'})."
            f"{projection}\n\n"
            + table(["streams", "chunks in", "chunks out", "median out chunk B", "delay p50 ms", "delay p99 ms",
                     "max ms", "invalid chunks", "lost B", "gateway CPU (1 core)", "CPU per stream", "µs per 20 ms",
                     "load avg",
                     "verdict"],
                    rows)
            + f"\n\nEach stream: Exotel's Voicebot protocol, 100 ms slin chunks (1600 B) every 100 ms for "
              f"{args.seconds:g} s, echo engine at 16 kHz (every frame resampled up and back down). Delay counts "
              "from the sending of an input chunk to the arrival of the output chunk holding its echo, so it "
              "includes the wait imposed by Exotel's 3.2 KB minimum chunk (200 ms of 8 kHz PCM): that floor, "
              "not the gateway, dominates the figure. µs per 20 ms = the gateway process's CPU time (/proc) over the "
              "step ÷ 20 ms frames of audio echoed (one in and one out each): unlike the delay it carries over "
              "from a busy machine. The 1-minute load average shows how busy the machine was (other "
              "processes share these cores).")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="10,50,100,200,300", type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--seconds", type=float, default=5.0, help="media seconds per step")
    p.add_argument("--budget", type=float, default=180.0, help="total seconds before no new step starts")
    p.add_argument("--keep-going", action="store_true", help="run every step even after one fails")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    p.add_argument("--no-pin", action="store_true", help="do not pin gateway and generator to separate cores")
    args = p.parse_args()
    results = run_async(main_async(args))  # uvloop when installed, as `gateway serve`
    body = report(results, args)
    print(body)
    if not args.no_write and results:
        write_section("exotel_ws", "Exotel Voicebot: concurrent streams per core", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
