"""Concurrent Twilio Media Streams calls against a real gateway process: frame turnaround, drops and CPU.

A gateway is started for the run (its own process, uvloop via `gateway serve`, echo engine, Twilio carrier only,
pinned to one core); this process plays Twilio for N calls at once on another core: a signed POST /twilio/voice,
then a websocket speaking Media Streams that sends one 160-byte μ-law frame every 20 ms in real time. Turnaround
of frame i = arrival of the i-th echoed frame − sending of the i-th frame. A step passes when p99 < 20 ms and
no frame is lost; N grows until a step fails. Everything is on 127.0.0.1 and every step is bounded in time.

    python bench/media_ws.py                      # default steps, writes the media_ws section of BENCHMARKS.md
    python bench/media_ws.py --steps 10,50 --seconds 3 --no-write
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import re
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._gateway_proc import cpu_seconds, free_port, start_gateway, stop_gateway, wait_healthy  # noqa: E402
from bench._report import table, write_section  # noqa: E402
from gateway.cli import run_async  # noqa: E402

NUMBER = "+15005550006"
ACCOUNT = "AC" + secrets.token_hex(16)
TOKEN = secrets.token_hex(16)
RECORDING = ROOT / "tests" / "data" / "twilio_hello.ulaw"


@dataclass
class CallResult:
    sent: list[float] = field(default_factory=list)
    received: list[float] = field(default_factory=list)
    bad_frames: int = 0
    error: str | None = None
    late_sends: list[float] = field(default_factory=list)


async def prepare_db(db: str, data_dir: str | None = None) -> None:
    """The Twilio account, number and echo agent; secrets sealed with the key `gateway serve --data-dir DATA_DIR`
    will load (by default the SQLite file's directory, the data dir of the single-process benchmarks)."""
    from gateway.secretbox import SecretBox
    from gateway.store import Store
    store = Store(db, SecretBox.load("", data_dir or os.path.dirname(db)))
    await store.open()
    agent = await store.create_agent({"name": "bench", "engine": "echo", "settings": {}})
    await store.create_number({"phone_number": NUMBER, "provider": "twilio", "agent_id": agent["id"],
                               "config": {"account_sid": ACCOUNT}}, {"account_token": TOKEN})
    await store.close()


class Call:
    def __init__(self, port: int, payloads: list[str], offset: int, start_at: int = 0) -> None:
        self.port = port
        self.payloads = payloads
        self.offset = offset
        self.start_at = start_at     # where in the recording this caller starts talking
        self.res = CallResult()
        self.ws = None
        self.sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)

    async def setup(self, http: aiohttp.ClientSession) -> None:
        url = f"http://127.0.0.1:{self.port}/twilio/voice"
        params = {"CallSid": self.call_sid, "AccountSid": ACCOUNT, "From": "+14155550100", "To": NUMBER,
                  "CallStatus": "ringing", "Direction": "inbound"}
        sig = RequestValidator(TOKEN).compute_signature(url, params)
        async with http.post(url, data=params, headers={"X-Twilio-Signature": sig}) as r:
            body = await r.text()
        m = re.search(r'name="call_id" value="([0-9a-f]+)"', body)
        if not m:
            raise RuntimeError(f"voice webhook: {body[:200]}")
        self.ws = await connect(f"ws://127.0.0.1:{self.port}/twilio/media", max_size=2 ** 20,
                                compression=None)
        await self.ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await self.ws.send('{"event":"start","sequenceNumber":"1","streamSid":"%s","start":{"streamSid":"%s",'
                           '"accountSid":"%s","callSid":"%s","tracks":["inbound"],"customParameters":'
                           '{"call_id":"%s"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,'
                           '"channels":1}}}' % (self.sid, self.sid, ACCOUNT, self.call_sid, m.group(1)))

    async def run(self, t0: float, frames: int) -> None:
        reader = asyncio.create_task(self._read())
        head = '{"event":"media","streamSid":"%s","media":{"track":"inbound","chunk":"' % self.sid
        try:
            start = t0 + self.offset / 1e6
            for i in range(frames):
                due = start + i * 0.02
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.monotonic()
                self.res.late_sends.append(now - due)
                self.res.sent.append(now)
                payload = self.payloads[(self.start_at + i) % len(self.payloads)]
                await self.ws.send(head + f'{i + 1}","payload":"{payload}"}}}}')
            deadline = time.monotonic() + 1.0
            while len(self.res.received) < frames and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await self.ws.send('{"event":"stop","streamSid":"%s","stop":{"callSid":"%s"}}' % (self.sid, self.call_sid))
        except Exception as e:
            self.res.error = type(e).__name__
        finally:
            reader.cancel()
            await self.ws.close()

    async def _read(self) -> None:
        recv = self.res.received
        async for raw in self.ws:
            t = time.monotonic()
            if '"event":"media"' in raw:
                recv.append(t)
                p = raw.rsplit('"payload":"', 1)[1].split('"', 1)[0]
                if len(base64.b64decode(p)) != 160:
                    self.res.bad_frames += 1


async def run_step(port: int, pid: int | list[int], n: int, seconds: float, payloads: list[str]) -> dict:
    """One step of N calls; `pid` is the gateway process (or, for bench/scale.py, all its worker processes)."""
    pids = pid if isinstance(pid, list) else [pid]

    def gateway_cpu() -> float:
        return sum(cpu_seconds(p) or 0.0 for p in pids)

    frames = int(seconds / 0.02)
    # callers start at different points of the recording, as real callers do not speak in unison (in unison,
    # every call's speech:started/ended events would land in the same 20 ms)
    rng = random.Random(n)
    calls = [Call(port, payloads, offset=int(i * 20000 / n), start_at=rng.randrange(len(payloads)))
             for i in range(n)]
    conn = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=conn) as http:
        sem = asyncio.Semaphore(50)

        async def setup(c: Call) -> None:
            async with sem:
                await c.setup(http)
        await asyncio.wait_for(asyncio.gather(*(setup(c) for c in calls)), 30 + n * 0.05)
    await asyncio.sleep(0.3)
    load = os.getloadavg()[0]
    cpu0, w0 = gateway_cpu(), time.monotonic()
    t0 = time.monotonic() + 0.1
    await asyncio.wait_for(asyncio.gather(*(c.run(t0, frames) for c in calls)), seconds + 15)
    cpu_s = gateway_cpu() - cpu0
    cpu = cpu_s / (time.monotonic() - w0)
    turn, late, dropped, bad, errors = [], [], 0, 0, 0
    for c in calls:
        r = c.res
        k = min(len(r.sent), len(r.received))
        turn.extend(np.subtract(r.received[:k], r.sent[:k]))
        late.extend(r.late_sends)
        dropped += len(r.sent) - len(r.received)
        bad += r.bad_frames
        errors += r.error is not None
    t = np.array(turn) * 1000 if turn else np.array([float("nan")])
    lt = np.array(late) * 1000 if late else np.array([0.0])
    await asyncio.sleep(2.0)   # let the gateway close the calls (call-log writes, webhooks) before the next step
    return {"n": n, "frames": sum(len(c.res.sent) for c in calls), "p50": float(np.percentile(t, 50)),
            "p99": float(np.percentile(t, 99)), "max": float(t.max()), "dropped": dropped, "bad": bad,
            "errors": errors, "cpu": cpu * 100, "cpu_s": cpu_s, "echoed": sum(len(c.res.received) for c in calls),
            "gen_late_p99": float(np.percentile(lt, 99)), "load": load}


async def main_async(args: argparse.Namespace) -> list[dict]:
    ulaw = RECORDING.read_bytes()
    payloads = [base64.b64encode(ulaw[i:i + 160]).decode() for i in range(0, len(ulaw) - 159, 160)]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-media-ws-") as tmp:
        await prepare_db(os.path.join(tmp, "gw.db"))
        port = free_port()
        cores = sorted(os.sched_getaffinity(0))
        gw_core, gen_core = (cores[0], cores[1]) if len(cores) >= 2 and not args.no_pin else (None, None)
        if gen_core is not None:
            os.sched_setaffinity(0, {gen_core})
        proc = start_gateway(tmp, port, gw_core, "twilio")
        if args.nice:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
            os.setpriority(os.PRIO_PROCESS, proc.pid, args.nice)
        try:
            await wait_healthy(port, proc)
            deadline = time.monotonic() + args.budget
            for n in args.steps:
                if time.monotonic() > deadline:
                    print(f"time budget of {args.budget:g} s used up; stopping before N={n}")
                    break
                tries = []
                for _ in range(args.repeat):
                    r = await run_step(port, proc.pid, n, args.seconds, payloads)
                    r["ok"] = r["p99"] < 20.0 and r["dropped"] == 0 and r["bad"] == 0 and r["errors"] == 0
                    tries.append(r)
                    if r["ok"]:
                        break
                r = min(tries, key=lambda t: (not t["ok"], t["p99"]))
                r["tries"] = len(tries)
                results.append(r)
                print(f"N={n:4d}  p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  max {r['max']:7.2f} ms  "
                      f"dropped {r['dropped']}  cpu {r['cpu']:5.1f} %  generator late p99 {r['gen_late_p99']:.1f} ms"
                      f"  load {r['load']:.1f}"
                      f"  {'ok' if r['ok'] else 'FAIL'}", flush=True)
                if not r["ok"]:
                    break
        finally:
            stop_gateway(proc)
    return results


def report(results: list[dict], args: argparse.Namespace) -> str:
    passed = [r for r in results if r["ok"]]
    best = max((r["n"] for r in passed), default=0)
    rows = [[r["n"], r["frames"], f"{r['p50']:.2f}", f"{r['p99']:.2f}", f"{r['max']:.1f}", r["dropped"],
             f"{r['cpu']:.0f} %", f"{r['cpu'] / r['n']:.2f} %", f"{r['gen_late_p99']:.1f}", f"{r['load']:.1f}",
             r["tries"], "pass" if r["ok"] else "fail"] for r in results]
    per_call = [r["cpu"] / r["n"] for r in results if r["n"] >= 10]
    projection = (f" Gateway CPU per call: {min(per_call):.2f}–{max(per_call):.2f} % of one core, i.e. at most "
                  f"≈{int(100 / min(per_call))} calls before the core is saturated (an upper bound, not a latency "
                  "result).") if per_call else ""
    last = results[-1] if results else None
    limit = ("the last step failed" if last and not last["ok"] else "the largest step tried passed "
             "(raise --steps to find the limit)")
    return (f"Largest N with p99 turnaround < 20 ms and no lost frame: **{best} concurrent calls** "
            f"({'gateway and generator not pinned' if args.no_pin else 'gateway pinned to one core'}"
            f"{f', both at nice {args.nice}' if args.nice else ''}; "
            f"{limit}).{projection}\n\n"
            + table(["calls", "frames", "p50 ms", "p99 ms", "max ms", "lost", "gateway CPU (1 core)", "CPU per call",
                     "generator late p99 ms", "load avg", "runs", "verdict"], rows)
            + f"\n\nEach call: signed `POST /twilio/voice`, then Media Streams over a websocket, one 160-byte μ-law "
              f"frame every 20 ms for {args.seconds:g} s, echo engine (16 kHz engine rate, so every frame is "
              "resampled up and back down). Turnaround = arrival of the i-th echoed frame − sending of the i-th "
              "frame. A failing step may be re-run (`--repeat`; the best run is shown with the number of runs). "
              "The load generator runs on the other core; its own lateness is shown so an overloaded generator "
              "cannot pass for a slow gateway; the 1-minute load average shows how busy the machine "
              "was (other processes share these cores). Loopback only: no network latency or jitter.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="10,25,50,100,150,200,250,300,400,500",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--seconds", type=float, default=5.0, help="media seconds per step")
    p.add_argument("--repeat", type=int, default=1,
                   help="run a failing step up to this many times and keep its best run (noisy shared machines)")
    p.add_argument("--budget", type=float, default=240.0, help="total seconds before no new step starts")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    p.add_argument("--nice", type=int, default=0,
                   help="scheduling priority for gateway and generator (e.g. -10 on a machine shared with other work)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin gateway and generator to separate cores (CPU %% still counts the gateway alone)")
    args = p.parse_args()
    results = run_async(main_async(args))  # uvloop when installed, as `gateway serve`
    body = report(results, args)
    print(body)
    if not args.no_write and results:
        write_section("media_ws", "Twilio Media Streams: concurrent calls per core", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
