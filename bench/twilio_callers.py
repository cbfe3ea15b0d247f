"""Twilio Media Streams callers spread over several processes, each with one cheap send loop.

bench/media_ws.py plays Twilio from one Python process with one sleeping task per call: at a few hundred calls
that process needs most of a core by itself and becomes late (its own send lateness p99 reached 30 ms on the
2-core box), and on a machine where the gateway's workers need the same cores the generator, not the gateway,
sets the limit. Here the calls are split over `procs` processes; each sets its calls up on an event loop (uvloop,
like the gateway), then runs the media from one synchronous loop for all its calls (`run_frames`) on plain
non-blocking sockets, speaking the websocket itself with bench/ws_client.py's frames. Every media message of a call
is built and masked before the first frame (`Caller.build`), so a frame costs the loop one `send` of ready bytes,
and an echo one `recvmsg` and a few byte comparisons (BENCHMARKS.md, "Scale-out (a)": µs of generator CPU per
frame). The protocol is Twilio's published one: a signed `POST /twilio/voice`, the `<Stream>` URL from the TwiML
opened with a signed upgrade (client frames masked), then `connected`, `start` with `customParameters.call_id`, a
`media` message (sequenceNumber, track, chunk, timestamp, 160 μ-law bytes in base64) every 20 ms, `stop`. The
measure is media_ws's: turnaround of frame i = arrival of the i-th echoed media message (the kernel's receive
stamp) − sending of the i-th frame, both on CLOCK_REALTIME, one clock for every process of the machine; every
echoed message is counted (lost frames) and its payload's size checked.

The parent (`run_step`) starts the processes, waits until every one has its calls set up, gives them one start
time, and merges what they measured. A child is `python bench/twilio_callers.py child` with a JSON job on stdin.
"""
from __future__ import annotations

import asyncio
import html
import json
import os
import random
import re
import secrets
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import ws_client  # noqa: E402

FRAME = 0.02
B64_FRAME = 216                          # len(base64 of 160 bytes)
STEADY_AFTER = 50                        # frames: a call's first second (set-up, cross-worker adoption) left out


# -- child: one process's share of the calls -------------------------------------------------------------------------
SO_TIMESTAMPNS = 35                     # <asm-generic/socket.h>; the socket module does not export it
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)


def _now_timespec() -> bytes:
    ns = time.time_ns()
    return _TIMESPEC.pack(ns // 1_000_000_000, ns % 1_000_000_000)


def arrivals(stamps: list[bytes]) -> np.ndarray:
    """The kernel's `struct timespec` stamps as CLOCK_REALTIME seconds."""
    if not stamps:
        return np.zeros(0)
    ts = np.frombuffer(b"".join(stamps), dtype=np.int64).reshape(-1, 2)
    return ts[:, 0] + ts[:, 1] * 1e-9


class Caller:
    """One call: the signed voice webhook, then its media websocket spoken on a plain non-blocking socket with
    bench/ws_client.py's frames (no websocket library and no event-loop callback per message).

    Arrival times are the kernel's: SO_TIMESTAMPNS stamps each segment as it reaches the socket and recvmsg reports
    the stamp of the last segment it read, so a call's echo is timed when the gateway's frame arrived, not when this
    process next ran. That lets `run_frames` read only when it wakes to send (no wake-up per received frame) and
    keeps the generator's own scheduling delays out of the gateway's turnaround; if two echoes of one call are read
    together both get the later stamp, which can only make the measure stricter."""

    def __init__(self, job: dict, index: int, start_at: int, pool: ws_client.MaskPool) -> None:
        self.job, self.index, self.start_at, self.pool = job, index, start_at, pool
        self.offset = index * FRAME / job["n"]         # the n calls' frames spread evenly over the 20 ms
        self.sid, self.call_sid = "MZ" + secrets.token_hex(16), "CA" + secrets.token_hex(16)
        self.sent: list[float] = []                    # CLOCK_REALTIME, the clock of the kernel's stamps
        self.received: list[bytes] = []                # the kernel's stamps as they come (struct timespec)
        self.frames: list[bytes] = []                  # every media message, a ready client frame (`build`)
        self.bad = 0
        self.error: str | None = None
        self.sock: socket.socket | None = None
        self.reader = ws_client.FrameReader()
        self.unsent = b""                              # what the socket's buffer did not take yet
        self.closing = False
        # every media message is this with its sequenceNumber, chunk, timestamp and payload put in (Twilio's order)
        self.media = (b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
                      b'"timestamp":"%d","payload":"%s"},"streamSid":"' + self.sid.encode() + b'"}')

    def build(self, payloads: list[bytes], count: int) -> None:
        """This call's `count` media messages as masked client frames, made before the run so that sending one costs
        a list index and a `send`: frame i is Twilio's message number i + 2 (`connected` has none, `start` is 1),
        chunk i + 1, timestamp 20·i ms, the recording's frames from this call's own starting point. Each frame's
        masking key is drawn from `MaskPool`'s keys, once, here (bench/ws_client.py says why a pool is fine for a
        generator that talks only to 127.0.0.1); what the gateway receives is the same bytes it got when every frame
        was formatted and masked in the send loop. The price is memory: ≈ 0.4 KB per frame, 54 MB (and 0.3 s of
        CPU, before the measured window) per process for 250 calls × 10 s."""
        n, frame, media, start = len(payloads), self.pool.frame, self.media, self.start_at
        self.frames = [frame(media % (i + 2, i + 1, 20 * i, payloads[(start + i) % n])) for i in range(count)]

    async def setup(self, http) -> None:
        from twilio.request_validator import RequestValidator

        job = self.job
        url = f"http://127.0.0.1:{job['port']}/twilio/voice"
        params = {"CallSid": self.call_sid, "AccountSid": job["account"], "From": "+14155550100",
                  "To": job["number"], "CallStatus": "ringing", "Direction": "inbound"}
        validator = RequestValidator(job["token"])
        async with http.post(url, data=params, headers={"X-Twilio-Signature": validator.compute_signature(
                url, params)}) as r:
            body = await r.text()
        call_id = re.search(r'name="call_id" value="([0-9a-f]+)"', body)
        stream = re.search(r'<Stream url="ws://([^/":]+):(\d+)(/[^"]*)"', body)
        if not call_id or not stream:
            raise RuntimeError(f"voice webhook: {body[:200]}")
        host, port, path = stream.group(1), int(stream.group(2)), html.unescape(stream.group(3))
        # Twilio signs the upgrade too: the stream URL with no parameters
        sig = validator.compute_signature(f"ws://{host}:{port}{path}", {})
        # a plain blocking socket on a thread: the event loop never owns it, so the steady state can use it directly
        await asyncio.get_running_loop().run_in_executor(None, self._open, host, port, path, sig)
        self.send(b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self.send(('{"event":"start","sequenceNumber":"1","start":{"accountSid":"%s","streamSid":"%s","callSid":'
                   '"%s","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,'
                   '"channels":1},"customParameters":{"call_id":"%s"}},"streamSid":"%s"}'
                   % (job["account"], self.sid, self.call_sid, call_id.group(1), self.sid)).encode())

    def _open(self, host: str, port: int, path: str, sig: str) -> None:
        """Connect and do the websocket handshake (blocking, at most 30 s), then leave the socket non-blocking."""
        sock = self.sock = socket.create_connection((host, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # a frame leaves now, as from Twilio
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        key = ws_client.new_key()
        sock.sendall(ws_client.handshake_request(f"{host}:{port}", path, key, {"X-Twilio-Signature": sig}))
        answer = b""
        while not (used := ws_client.handshake_response(answer, key)):
            more = sock.recv(4096)
            if not more:
                raise ConnectionError("closed during the websocket handshake")
            answer += more
        if answer[used:]:
            self.reader.feed(answer[used:])            # nothing is due before `start`
        sock.setblocking(False)

    def send(self, text: bytes, opcode: int = ws_client.TEXT) -> None:
        self._write(self.pool.frame(text, opcode))

    def _write(self, data: bytes) -> None:
        if self.unsent:                                # keep the stream's order behind what is waiting
            self.unsent += data
            data, self.unsent = self.unsent, b""
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._fail(type(e).__name__)
            return
        if n < len(data):
            self.unsent = data[n:]

    def flush(self) -> None:
        if self.unsent:
            self._write(b"")

    def receive(self) -> bool:
        """Read what arrived; False once the socket is closed.

        The common read is exactly one echoed media message: one unfragmented text frame (FIN + text, no RSV bits,
        unmasked, 16-bit length) that is the whole read. That one is checked in place (no FrameReader, no slices):
        counted, and its payload's size checked. Anything else (two frames in one read, a partial frame, control
        frames, fragments) goes through `FrameReader` as before."""
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, _ANCILLARY)
        except BlockingIOError:
            return True
        except OSError as e:
            self._fail(type(e).__name__)
            return False
        if not data:
            if self.error is None and not self.closing:
                self.error = "ConnectionClosed"
            return False
        # kept as the kernel's 16 bytes, decoded once after the run (`arrivals`)
        t = anc[0][2] if anc else _now_timespec()      # not stamped by the kernel: the read's own time
        if (data[0] == 0x81 and data[1] == 126 and (data[2] << 8 | data[3]) + 4 == len(data)
                and not self.reader.buf and self.reader.frag_op < 0):
            if data.startswith(b'{"event":"media"', 4):
                self.received.append(t)
                i = data.find(b'"payload":"', 4) + 11
                if i < 15 or data.find(b'"', i) - i != B64_FRAME:
                    self.bad += 1
            return True
        try:
            messages = self.reader.feed(data)
        except ws_client.ProtocolError as e:
            self._fail(f"ProtocolError: {e}")
            return False
        for op, payload in messages:
            if op == ws_client.TEXT:
                if payload.startswith(b'{"event":"media"'):
                    self.received.append(t)
                    i = payload.find(b'"payload":"') + 11
                    if i < 11 or payload.find(b'"', i) - i != B64_FRAME:
                        self.bad += 1
            elif op == ws_client.PING:
                self.send(payload, ws_client.PONG)
            elif op == ws_client.CLOSE:
                if not self.closing:               # the server closed first: answer (RFC 6455 §5.5.1), and done
                    if self.error is None:
                        self.error = "closed by the server: " + payload[2:].decode("utf-8", "replace")
                    self.send(payload[:2], ws_client.CLOSE)
                    self.closing = True
                return False
            elif op == ws_client.BINARY:
                self.bad += 1
        return True

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why

    def close(self) -> None:
        if self.sock is not None:
            if not self.closing and self.error is None:
                self.closing = True
                self._write(self.pool.close(1000))
            self.sock.close()


def run_frames(callers: list[Caller], t0: float, frames: int, drain: float = 1.0) -> None:
    """Every call's `frames` media messages (built by `Caller.build`), frame i of a call at t0 + i·20 ms + its
    offset (t0 on CLOCK_REALTIME), from one loop that sleeps until the next call is due, reads whatever arrived
    meanwhile (epoll, level-triggered, without waiting), and sends the frame of every call due within the next
    millisecond (as the previous asyncio version grouped them). Then reads until every call has its echoes or
    `drain` seconds have passed.

    Per frame the loop does only what the measure needs: one send of a ready frame and one clock read for the next
    frame's send time; how late each frame left is worked out after the run from the send times (`lateness`), not
    per frame."""
    ep = select.epoll()
    by_fd: dict[int, Caller] = {}
    for c in callers:
        if c.error is None:
            ep.register(c.sock.fileno(), select.EPOLLIN)
            by_fd[c.sock.fileno()] = c
    order = sorted(callers, key=lambda c: c.offset)
    offsets = [c.offset for c in order]
    count = len(order)
    now, sleep, poll = time.time, time.sleep, ep.poll

    def read(timeout: float = 0) -> None:
        for fd, _ in poll(timeout):
            c = by_fd[fd]
            if not c.receive():
                ep.unregister(fd)
                del by_fd[fd]
            elif c.unsent:
                c.flush()

    for i in range(frames):
        base = t0 + i * FRAME
        k = 0
        while k < count:
            delay = base + offsets[k] - now()
            if delay > 0:
                sleep(delay)
            read()
            t = now()
            end = t + 0.001 - base
            while k < count and offsets[k] <= end:
                c = order[k]
                k += 1
                if c.error is None:
                    c.sent.append(t)
                    c._write(c.frames[i])
                    t = now()
    deadline = now() + drain
    while by_fd and now() < deadline and any(len(c.received) < len(c.sent) for c in callers if c.error is None):
        read(0.02)
    ep.close()


def lateness(c: Caller, t0: float) -> np.ndarray:
    """How late each of `c`'s frames left (s, ≥ 0): its send time − when it was due (t0 + i·20 ms + c's offset).
    Frames are sent in order and none is skipped while the call is up, so the i-th send time is frame i's."""
    sent = np.array(c.sent)
    return np.maximum(sent - (t0 + c.offset + FRAME * np.arange(sent.size)), 0.0)


async def child_main(job: dict) -> None:
    import aiohttp

    payloads = [p.encode() for p in json.loads(Path(job["payloads"]).read_text())]
    rng = random.Random(job["seed"])
    pool = ws_client.MaskPool()
    callers = [Caller(job, i, rng.randrange(len(payloads)), pool) for i in job["indices"]]
    for c in callers:
        c.build(payloads, job["frames"])
    sem = asyncio.Semaphore(25)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=25)) as http:
        async def setup(c: Caller) -> None:
            async with sem:
                await c.setup(http)
        await asyncio.gather(*(setup(c) for c in callers))
    print("ready", flush=True)
    t0 = float(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
    cpu0 = os.times()
    # the steady state runs outside the event loop (it has nothing else to do): t0 moved to CLOCK_REALTIME
    t0 = t0 - time.monotonic() + time.time()
    run_frames(callers, t0, job["frames"], job["drain"])
    for c in callers:
        if c.error is None:
            c.send(b'{"event":"stop","sequenceNumber":"%d","stop":{"accountSid":"%s","callSid":"%s"},'
                   b'"streamSid":"%s"}' % (job["frames"] + 2, job["account"].encode(), c.call_sid.encode(),
                                          c.sid.encode()))
        c.close()
    cpu1 = os.times()
    cpu = [cpu1.user - cpu0.user, cpu1.system - cpu0.system]     # the kernel's accounting (/proc/PID/stat)
    turn: list[float] = []
    steady: list[float] = []                           # frames after each call's first second
    dropped = bad = errors = 0
    for c in callers:
        k = min(len(c.sent), len(c.received))
        t = (arrivals(c.received[:k]) - np.array(c.sent[:k])).tolist()
        turn.extend(t)
        steady.extend(t[STEADY_AFTER:])
        dropped += len(c.sent) - len(c.received)
        bad += c.bad
        errors += c.error is not None
        if c.error is not None:
            print(f"call {c.index}: {c.error}", file=sys.stderr, flush=True)
    late = np.concatenate([lateness(c, t0) for c in callers]) if callers else np.array([])
    np.savez(job["out"], turn=np.array(turn), steady=np.array(steady), late=late, cpu=np.array(cpu),
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
                   token: str, number: str, on_running=None, drain: float = 1.0) -> dict:
    """N calls over `procs` processes for `seconds` of media each. `on_running()` (async) is awaited once every
    call is set up, just before the frames start (e.g. to start CPU accounting). `generator_cpu` in the result:
    the CPU seconds the caller processes used from the first frame to their last close. An echo that has not arrived
    `drain` seconds after the last frame was sent is lost."""
    tmp = Path(tempfile.mkdtemp(prefix="twilio-callers-"))
    (tmp / "payloads.json").write_text(json.dumps(payloads))
    procs = max(1, min(procs, n))
    # interleaved: every process spans the 20 ms. Contiguous shares (process k in its own slice of the 20 ms) wake
    # each process half as often and cost ~20 % less generator CPU per frame, but the frames then leave in groups
    # twice as large, half as often, and the gateway's turnaround rose with that (p50 0.21 → 0.34 ms, p99 2.6 →
    # 6.7–15 ms; 100 streams, one worker, A/B alternated, bench/ab_callers.py): a different load, so not done
    shares = [list(range(k, n, procs)) for k in range(procs)]
    children: list[subprocess.Popen] = []
    try:
        for k, idx in enumerate(shares):
            job = {"port": port, "n": n, "indices": idx, "frames": int(seconds / FRAME), "seed": n * 100 + k,
                   "drain": drain, "account": account, "token": token, "number": number,
                   "payloads": str(tmp / "payloads.json"), "out": str(tmp / f"out{k}.npz")}
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
            if await _line(p, seconds + drain + 30) != "done":
                raise RuntimeError("twilio caller process did not finish")
        turn, late, steady = [], [], []
        dropped = bad = errors = frames = 0
        user = system = 0.0
        for k in range(len(children)):
            with np.load(tmp / f"out{k}.npz") as d:
                turn.append(d["turn"])
                steady.append(d["steady"])
                late.append(d["late"])
                a, b, c, f = (int(x) for x in d["counts"])
                user, system = user + float(d["cpu"][0]), system + float(d["cpu"][1])
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
            "generator_cpu": user + system, "generator_user": user, "generator_sys": system}


def main() -> int:
    if sys.argv[1:] != ["child"]:
        raise SystemExit(__doc__)
    from gateway.cli import run_async

    job = json.loads(sys.stdin.readline())

    async def go() -> int:
        await child_main(job)
        return 0
    return run_async(go())


if __name__ == "__main__":
    sys.exit(main())
