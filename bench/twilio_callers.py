"""Twilio Media Streams callers spread over several processes, each with one cheap send loop.

bench/media_ws.py plays Twilio from one Python process with one sleeping task per call: at a few hundred calls
that process needs most of a core by itself and becomes late (its own send lateness p99 reached 30 ms on the
2-core box), and on a machine where the gateway's workers need the same cores the generator, not the gateway,
sets the limit. Here the calls are split over `procs` processes (uvloop, like the gateway); each process wakes
once per group of calls due within the same millisecond and sends their frames back to back, and each call's
reader only timestamps the echo and checks its size. The protocol spoken is the same as media_ws's (signed
`POST /twilio/voice`, then `connected`, `start` with `customParameters.call_id`, a `media` frame of 160 μ-law
bytes every 20 ms, `stop`), and so is the measure: turnaround of frame i = arrival of the i-th echoed frame −
sending of the i-th frame (CLOCK_MONOTONIC is one clock for every process of the machine).

The parent (`run_step`) starts the processes, waits until every one has its calls set up, gives them one start
time, and merges what they measured. A child is `python bench/twilio_callers.py child` with a JSON job on stdin.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FRAME = 0.02
B64_FRAME = 216                          # len(base64 of 160 bytes)
STEADY_AFTER = 50                        # frames: a call's first second (set-up, cross-worker adoption) left out


# -- child: one process's share of the calls -------------------------------------------------------------------------
class Caller(asyncio.Protocol):
    """One call: its media websocket driven through websockets' sans-I/O protocol straight from a transport (no
    per-message coroutine, lock or queue of the asyncio client: measured 69 µs of generator CPU per frame with
    it, on this box under load)."""

    def __init__(self, job: dict, index: int, start_at: int) -> None:
        self.job, self.index, self.start_at = job, index, start_at
        self.offset = index * FRAME / job["n"]         # the n calls' frames spread evenly over the 20 ms
        self.sid, self.call_sid = "MZ" + secrets.token_hex(16), "CA" + secrets.token_hex(16)
        self.sent: list[float] = []
        self.received: list[float] = []
        self.bad = 0
        self.error: str | None = None
        self.transport: asyncio.Transport | None = None
        self.ws = None
        self.opened: asyncio.Future[None] | None = None
        self.head = '{"event":"media","streamSid":"%s","media":{"track":"inbound","chunk":"' % self.sid

    async def setup(self, http) -> None:
        from twilio.request_validator import RequestValidator
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        job = self.job
        url = f"http://127.0.0.1:{job['port']}/twilio/voice"
        params = {"CallSid": self.call_sid, "AccountSid": job["account"], "From": "+14155550100",
                  "To": job["number"], "CallStatus": "ringing", "Direction": "inbound"}
        sig = RequestValidator(job["token"]).compute_signature(url, params)
        async with http.post(url, data=params, headers={"X-Twilio-Signature": sig}) as r:
            body = await r.text()
        m = re.search(r'name="call_id" value="([0-9a-f]+)"', body)
        if not m:
            raise RuntimeError(f"voice webhook: {body[:200]}")
        loop = asyncio.get_running_loop()
        self.ws = ClientProtocol(parse_uri(f"ws://127.0.0.1:{job['port']}/twilio/media"), max_size=2 ** 20)
        self.opened = loop.create_future()
        await loop.create_connection(lambda: self, "127.0.0.1", job["port"])
        self.ws.send_request(self.ws.connect())
        self._flush()
        await asyncio.wait_for(self.opened, 30)
        self.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self.send('{"event":"start","sequenceNumber":"1","streamSid":"%s","start":{"streamSid":"%s",'
                  '"accountSid":"%s","callSid":"%s","tracks":["inbound"],"customParameters":'
                  '{"call_id":"%s"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,'
                  '"channels":1}}}' % (self.sid, self.sid, job["account"], self.call_sid, m.group(1)))

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode

        t = time.monotonic()
        self.ws.receive_data(data)
        for ev in self.ws.events_received():
            if isinstance(ev, Frame):
                if ev.opcode is Opcode.TEXT and b'"event":"media"' in ev.data:
                    self.received.append(t)
                    if len(ev.data.rsplit(b'"payload":"', 1)[1].split(b'"', 1)[0]) != B64_FRAME:
                        self.bad += 1
            elif self.opened is not None and not self.opened.done():      # the handshake's answer
                if getattr(ev, "status_code", 0) == 101:
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(RuntimeError(f"websocket handshake: {ev}"))
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        elif self.error is None and self.ws is not None and self.ws.close_code is None:
            self.error = "ConnectionClosed"

    def _flush(self) -> None:
        for chunk in self.ws.data_to_send():
            if chunk and self.transport is not None and not self.transport.is_closing():
                self.transport.write(chunk)

    def send(self, text: str) -> None:
        self.ws.send_text(text.encode())
        self._flush()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.ws.send_close(1000)
            self._flush()
            self.transport.close()


async def child_main(job: dict) -> None:
    import aiohttp

    payloads: list[str] = json.loads(Path(job["payloads"]).read_text())
    rng = random.Random(job["seed"])
    callers = [Caller(job, i, rng.randrange(len(payloads))) for i in job["indices"]]
    sem = asyncio.Semaphore(25)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=25)) as http:
        async def setup(c: Caller) -> None:
            async with sem:
                await c.setup(http)
        await asyncio.gather(*(setup(c) for c in callers))
    print("ready", flush=True)
    t0 = float(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
    cpu0 = time.process_time()
    frames = job["frames"]
    callers.sort(key=lambda c: c.offset)
    late: list[float] = []
    for i in range(frames):                            # one loop: wake per group of calls due within 1 ms
        base = t0 + i * FRAME
        k = 0
        while k < len(callers):
            due = base + callers[k].offset
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            group_end = due + 0.001
            while k < len(callers) and base + callers[k].offset <= group_end:
                c = callers[k]
                k += 1
                if c.error is not None:
                    continue
                now = time.monotonic()
                late.append(max(0.0, now - (base + c.offset)))
                c.sent.append(now)
                try:
                    c.send(c.head + f'{i + 1}","payload":"{payloads[(c.start_at + i) % len(payloads)]}"}}}}')
                except Exception as e:
                    c.error = type(e).__name__
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and any(len(c.received) < len(c.sent) for c in callers if c.error is None):
        await asyncio.sleep(0.02)
    for c in callers:
        if c.error is None:
            try:
                c.send('{"event":"stop","streamSid":"%s","stop":{"callSid":"%s"}}' % (c.sid, c.call_sid))
            except Exception as e:
                c.error = type(e).__name__
        c.close()
    cpu = time.process_time() - cpu0
    turn: list[float] = []
    steady: list[float] = []                           # frames after each call's first second
    dropped = bad = errors = 0
    for c in callers:
        k = min(len(c.sent), len(c.received))
        t = np.subtract(c.received[:k], c.sent[:k]).tolist()
        turn.extend(t)
        steady.extend(t[STEADY_AFTER:])
        dropped += len(c.sent) - len(c.received)
        bad += c.bad
        errors += c.error is not None
    np.savez(job["out"], turn=np.array(turn), steady=np.array(steady), late=np.array(late), cpu=np.array([cpu]),
             counts=np.array([dropped, bad, errors, sum(len(c.sent) for c in callers)]))
    print("done", flush=True)


# -- parent ----------------------------------------------------------------------------------------------------------
async def _line(proc: subprocess.Popen, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), timeout)
    if not line:
        raise RuntimeError(f"twilio caller process {proc.pid} exited ({proc.poll()}); see its stderr above")
    return line.strip()


async def run_step(port: int, n: int, seconds: float, payloads: list[str], *, procs: int, account: str,
                   token: str, number: str, on_running=None) -> dict:
    """N calls over `procs` processes for `seconds` of media each. `on_running()` (async) is awaited once every
    call is set up, just before the frames start (e.g. to start CPU accounting). `generator_cpu` in the result:
    the CPU seconds the caller processes used from the first frame to their last close."""
    tmp = Path(tempfile.mkdtemp(prefix="twilio-callers-"))
    (tmp / "payloads.json").write_text(json.dumps(payloads))
    procs = max(1, min(procs, n))
    shares = [list(range(k, n, procs)) for k in range(procs)]        # interleaved: every process spans the 20 ms
    children: list[subprocess.Popen] = []
    try:
        for k, idx in enumerate(shares):
            job = {"port": port, "n": n, "indices": idx, "frames": int(seconds / FRAME), "seed": n * 100 + k,
                   "account": account, "token": token, "number": number, "payloads": str(tmp / "payloads.json"),
                   "out": str(tmp / f"out{k}.npz")}
            p = subprocess.Popen([sys.executable, str(Path(__file__)), "child"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            p.stdin.write(json.dumps(job) + "\n")
            p.stdin.flush()
            children.append(p)
        for p in children:
            if await _line(p, 60 + n * 0.1) != "ready":
                raise RuntimeError("twilio caller process did not get ready")
        if on_running is not None:
            await on_running()
        t0 = time.monotonic() + 0.2
        for p in children:
            p.stdin.write(f"{t0!r}\n")
            p.stdin.flush()
        for p in children:
            if await _line(p, seconds + 30) != "done":
                raise RuntimeError("twilio caller process did not finish")
        turn, late, steady = [], [], []
        dropped = bad = errors = frames = 0
        cpu = 0.0
        for k in range(len(children)):
            with np.load(tmp / f"out{k}.npz") as d:
                turn.append(d["turn"])
                steady.append(d["steady"])
                late.append(d["late"])
                a, b, c, f = (int(x) for x in d["counts"])
                cpu += float(d["cpu"][0])
            dropped, bad, errors, frames = dropped + a, bad + b, errors + c, frames + f
        for p in children:
            p.wait(10)
    finally:
        for p in children:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    t = np.concatenate(turn) * 1000 if turn else np.array([])
    lt = np.concatenate(late) * 1000 if late else np.array([])
    t = t if t.size else np.array([float("nan")])
    st = np.concatenate(steady) * 1000 if steady else np.array([])
    st = st if st.size else np.array([float("nan")])
    lt = lt if lt.size else np.array([0.0])
    return {"n": n, "frames": frames, "p50": float(np.percentile(t, 50)), "p99": float(np.percentile(t, 99)),
            "p99_steady": float(np.percentile(st, 99)),
            "max": float(t.max()), "dropped": dropped, "bad": bad, "errors": errors,
            "gen_late_p99": float(np.percentile(lt, 99)), "procs": len(children),
            "generator_cpu": cpu}


def main() -> int:
    if sys.argv[1:] != ["child"]:
        raise SystemExit(__doc__)
    sys.path.insert(0, str(ROOT))
    from gateway.cli import run_async

    job = json.loads(sys.stdin.readline())

    async def go() -> int:
        await child_main(job)
        return 0
    return run_async(go())


if __name__ == "__main__":
    sys.exit(main())
