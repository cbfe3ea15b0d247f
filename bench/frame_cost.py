"""What each step of the media path costs per 20 ms frame, measured in-process on the gateway's real objects.

Two call shapes, both with the echo engine at 16 kHz (every frame resampled up and back down, as in
bench/media_ws.py and bench/sip_load.py):

* a Twilio Media Streams call: websocket frame parse, JSON, base64, μ-law, VAD tap, bus, engine hand-off, echo,
  bus out, turn timing, μ-law, base64, the outgoing message and its websocket frame;
* a SIP G.711 echo call: RTP parse, RTCP reception stats, jitter buffer, A-law, the same core path, RTP build,
  UDP send and the shared 20 ms clock.

Each step is timed alone (CPU time, `time.process_time`, over thousands of frames of a real recording, best of
several interleaved runs, the bare loop's own cost subtracted). Then the *whole* in-process path is timed with
many calls at once (real `Call`s with their engine tasks; for SIP real `RtpSession`s on real UDP sockets driven
by the clock's tick): the difference between that and the sum of its steps is the asyncio hand-off (task
switches, futures, queues), which no single step owns. Finally, `--e2e N` runs one step of bench/media_ws.py
(a real `gateway serve` process, N Twilio streams from another process) and compares the process's measured CPU
per frame with the sum: the remainder is the event loop, socket system calls and aiohttp's plumbing.

    python bench/frame_cost.py                   # writes the frame_cost section of BENCHMARKS.md
    python bench/frame_cost.py --e2e 100          # plus a 100-stream end-to-end run
    python bench/frame_cost.py --no-write --frames 2000
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import gc
import os
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp.http_websocket import WebSocketReader, WSMsgType  # noqa: E402

from bench._report import table, write_section  # noqa: E402
from bench.ws_client import MaskPool  # noqa: E402
from carriers.mediasocket import decode_event  # noqa: E402
from carriers.twilio_media import CloseCode, MediaStream  # noqa: E402
from carriers.wsdirect import DirectWebSocket, _DispatchQueue  # noqa: E402
from gateway import mediabatch  # noqa: E402
from gateway.bus import CallBus  # noqa: E402
from gateway.cli import run_async  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.frames import AudioFrame  # noqa: E402
from gateway.rtp.engine import RtpEngine  # noqa: E402
from gateway.rtp.jitter import JitterBuffer  # noqa: E402
from gateway.rtp.packet import build_rtp, parse_rtp  # noqa: E402
from gateway.rtp.rtcp import ReceptionStats  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402
from gateway.turns import Timeline  # noqa: E402
from gateway.vad import SpeechTap  # noqa: E402
from voicecodecs import (  # noqa: E402
    StreamResampler,
    alaw_to_pcm16,
    pcm16_to_alaw,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
)
from voicecodecs.resample import BATCH_MIN  # noqa: E402

RECORDING = ROOT / "tests" / "data" / "twilio_hello.ulaw"
SID = "MZ" + "0" * 32
US = 1e6


class Leg:
    """A carrier leg that does nothing: the bench drives the call's media directly."""

    async def hangup(self, call: Any, reason: str) -> None:
        pass

    async def transfer(self, call: Any, request: Any) -> None:
        pass


class NullTransport:
    """Where aiohttp's websocket writer writes in the step timings (the socket send is timed on its own)."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class ReaderProtocol:
    """What aiohttp's websocket data queue expects of the connection's protocol (flow control flags)."""

    _reading_paused = False
    _paused = False

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False


def speech_frames() -> list[bytes]:
    """The recording as 160-byte μ-law frames: speech and pauses, so the VAD does both kinds of work."""
    ulaw = RECORDING.read_bytes()
    return [ulaw[i:i + 160] for i in range(0, len(ulaw) - 159, 160)]


def cycle(frames: list[Any], n: int, start: int = 0) -> list[Any]:
    return [frames[(start + i) % len(frames)] for i in range(n)]


def media_message(ulaw: bytes, i: int) -> str:
    payload = base64.b64encode(ulaw).decode()
    return ('{"event":"media","sequenceNumber":"%d","streamSid":"%s","media":{"track":"inbound","chunk":"%d",'
            '"timestamp":"%d","payload":"%s"}}' % (i + 2, SID, i + 1, i * 20, payload))


def timed(fn: Callable[[Any], Any], items: list[Any]) -> float:
    t = time.process_time()
    for x in items:
        fn(x)
    return time.process_time() - t


async def atimed(fn: Callable[[Any], Awaitable[Any]], items: list[Any]) -> float:
    t = time.process_time()
    for x in items:
        await fn(x)
    return time.process_time() - t


def _noop(x: Any) -> None:
    return None


async def _anoop(x: Any) -> None:
    return None


class Steps:
    """Per-step timings: each step's best (lowest) µs per frame over the interleaved rounds."""

    def __init__(self) -> None:
        self.best: dict[str, float] = {}

    def keep(self, name: str, seconds: float, n: int, base: float = 0.0) -> None:
        us = max(0.0, (seconds - base) / n * US)
        self.best[name] = min(self.best.get(name, us), us)


async def step_timings(frames: int, rounds: int) -> dict[str, float]:
    """Every step alone, on the objects the call path uses, `rounds` interleaved rounds of `frames` frames."""
    ulaw_frames = cycle(speech_frames(), frames)
    pcm8 = [ulaw_to_pcm16(f) for f in ulaw_frames]
    up_ref = StreamResampler(8000, 16000)
    pcm16 = [up_ref.process(p) for p in pcm8]
    texts = [media_message(f, i) for i, f in enumerate(ulaw_frames)]
    pool = MaskPool()                  # masked text frames as a client (Twilio) sends them
    wire_in = [pool.frame(t.encode()) for t in texts]
    payloads = [base64.b64encode(f).decode() for f in ulaw_frames]
    b64_in = [base64.b64encode(f) for f in ulaw_frames]
    alaw = [pcm16_to_alaw(p) for p in pcm8]
    rtp_in = [build_rtp(8, False, i & 0xFFFF, i * 160, 0x1234, a) for i, a in enumerate(alaw)]
    prefix = '{"event":"media","streamSid":"%s","media":{"payload":"' % SID
    loop = asyncio.get_running_loop()
    s = Steps()

    with tempfile.TemporaryDirectory(prefix="bench-frame-cost-") as d:
        gw = Gateway(Settings(host="127.0.0.1", http_port=0, data_dir=d, api_key="k", engine="echo"), carriers={})
        await gw.start()
        try:
            call = await gw.calls.create(carrier="bench", direction="inbound", from_number="+15550000001",
                                         to_number="+15550000002", agent={"id": 0, "engine": "echo", "settings": {}})
            await call.attach(Leg(), 8000)
            for _ in range(rounds):
                base = timed(_noop, pcm8)
                abase = await atimed(_anoop, pcm8)
                n = len(pcm8)

                # -- Twilio inbound --------------------------------------------------------------------------
                # what a DirectWebSocket's connection does with each media message: aiohttp's frame parser hands
                # the text to the stream's handler in data_received (carriers/wsdirect.py), no queue, no task
                q = _DispatchQueue(ReaderProtocol(), 2 ** 16, loop=loop)
                q.handler = _noop
                reader = WebSocketReader(q, 256 * 1024, False, True)
                s.keep("ws frame parse (aiohttp parser → text handler)", timed(reader.feed_data, wire_in), n, base)

                class Msg:
                    type = WSMsgType.TEXT
                    data = ""
                msgs = []
                for t in texts:
                    m = Msg()
                    m.data = t
                    msgs.append(m)
                s.keep("JSON parse (safejson.loads_media + event check)",
                       timed(lambda m: decode_event(m, CloseCode, ""), msgs), n, base)
                s.keep("base64 decode", timed(lambda p: binascii.a2b_base64(p, strict_mode=True), payloads), n, base)
                s.keep("μ-law decode", timed(ulaw_to_pcm16, ulaw_frames), n, base)
                tap = SpeechTap(call)
                s.keep("VAD / speech tap (energy gate + webrtcvad)", timed(tap, pcm8), n, base)
                up = StreamResampler(8000, 16000)
                s.keep("resample 8 → 16 kHz", timed(up.process, pcm8), n, base)
                bus = CallBus(8000, 16000)
                bus.on_turnaround = lambda d, sec: None

                def bus_in(p: bytes, bus: CallBus = bus) -> None:
                    bus.feed_audio(p)
                    bus.inbound.get_nowait()
                s.keep("bus in, with its resampling (re-framer, frame, queue)", timed(bus_in, pcm8), n, base)

                # -- outbound --------------------------------------------------------------------------------
                down = StreamResampler(16000, 8000)
                s.keep("resample 16 → 8 kHz", timed(down.process, pcm16), n, base)

                async def bus_out(p: bytes, bus: CallBus = bus) -> None:
                    await bus.play(p)
                    bus.next_outbound_nowait()
                s.keep("bus out, with its resampling (re-framer, frame, queue)",
                       await atimed(bus_out, pcm16), n, abase)
                tl = Timeline(loop.time())

                def turn(p: bytes, tl: Timeline = tl, clock: Callable[[], float] = loop.time) -> None:
                    tl.agent_frame(p, clock())
                s.keep("turn timing (agent frame on the timeline)", timed(turn, pcm8), n, base)
                ulaw_s = timed(pcm16_to_ulaw, pcm8)
                s.keep("μ-law encode", ulaw_s, n, base)
                # the stream's own outgoing frame (MediaStream._media_frame: μ-law, base64, message and websocket
                # header as bytes); its μ-law is the row above
                ws = DirectWebSocket()
                ws._transport = NullTransport()
                stream = MediaStream(None, ws, cast(Any, None))
                stream._prefix = prefix
                s.keep("base64 encode + message text",
                       timed(stream._media_frame, pcm8) - ulaw_s, n)   # (the bare loop cancels out)
                out_frames = [stream._media_frame(p) for p in pcm8]
                s.keep(WS_WRITE, timed(ws.write_frame_nowait, out_frames), n, base)

                # -- SIP -------------------------------------------------------------------------------------
                s.keep("RTP parse", timed(parse_rtp, rtp_in), n, base)
                stats = ReceptionStats()
                seqs = list(range(n))
                s.keep("RTCP reception stats", timed(stats.update, seqs), n, base)
                jb = JitterBuffer()

                def jitter(sa: tuple[int, bytes], jb: JitterBuffer = jb) -> None:
                    jb.put(sa[0], sa[1], 0.0)
                    jb.pop()
                s.keep("jitter buffer put + pop", timed(jitter, [(i & 0xFFFF, a) for i, a in enumerate(alaw)]), n, base)
                s.keep("A-law decode", timed(alaw_to_pcm16, alaw), n, base)
                s.keep("A-law encode", timed(pcm16_to_alaw, pcm8), n, base)
                s.keep("RTP build", timed(lambda a: build_rtp(8, False, 1, 160, 0x1234, a), alaw), n, base)
            await call.end("user", "bench")
        finally:
            await gw.stop()
    s.best.update(await socket_costs(frames, rounds, b64_in))
    return s.best


async def socket_costs(frames: int, rounds: int, b64: list[bytes]) -> dict[str, float]:
    """One datagram sent and received on loopback through the event loop, and one ~250-byte TCP message: a
    ping-pong between two endpoints of this process, so each direction's send + receive is half a round trip."""
    loop = asyncio.get_running_loop()
    out: dict[str, float] = {}

    class Echo(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.got: asyncio.Future[None] | None = None
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            if self.got is not None and not self.got.done():
                self.got.set_result(None)

    a_t, a = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    b_t, b = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    a_addr, b_addr = a_t.get_extra_info("sockname"), b_t.get_extra_info("sockname")
    pkt = bytes(172)

    async def udp_round(_: Any) -> None:
        b.got = loop.create_future()
        a_t.sendto(pkt, b_addr)
        await b.got
        a.got = loop.create_future()
        b_t.sendto(pkt, a_addr)
        await a.got

    class Stream(asyncio.Protocol):
        def __init__(self) -> None:
            self.got: asyncio.Future[None] | None = None
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if self.got is not None and not self.got.done():
                self.got.set_result(None)

    server_side: list[Stream] = []

    def factory() -> Stream:
        p = Stream()
        server_side.append(p)
        return p
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(Stream, "127.0.0.1", port)
    while not server_side:
        await asyncio.sleep(0.01)
    srv = server_side[0]
    msg = bytes(250)

    async def tcp_round(_: Any) -> None:
        srv.got = loop.create_future()
        client.transport.write(msg)
        await srv.got
        client.got = loop.create_future()
        srv.transport.write(msg)
        await client.got

    items = list(range(min(frames, 3000)))
    n = len(items)
    for _ in range(rounds):
        base = await atimed(_anoop, items)
        for key, fn in (("UDP datagram: send + receive through the loop", udp_round),
                        ("TCP message: send + receive through the loop (websocket socket I/O)", tcp_round)):
            us = (await atimed(fn, items) - base) / n / 2 * US
            out[key] = min(out.get(key, us), us)
    a_t.close()
    b_t.close()
    client.transport.close()
    server.close()
    return out


class BatchedStream:
    """A Twilio stream as gateway/mediabatch.py sees it: the call is its inlet."""

    def __init__(self, call: Any) -> None:
        self.inlet = call

    def batch_failed(self, error: Exception) -> None:
        raise error


async def core_path(calls: int, frames: int, batched: bool = False) -> float:
    """µs of CPU per frame for the whole in-process core path of `calls` calls at once: carrier PCM in
    (`call.feed_audio`: VAD tap, bus, resampling) → the echo engine's task → `call.next_outbound()` (resampling,
    turn timing): what a carrier's reader and sender tasks do between the wire formats. `batched`: each call's
    frame goes through the loop's media batch (gateway/mediabatch.py) as a Twilio stream's does, every call's frame
    in the same loop iteration (the resampling both ways batched)."""
    pcm = [ulaw_to_pcm16(f) for f in speech_frames()]
    with tempfile.TemporaryDirectory(prefix="bench-frame-cost-") as d:
        gw = Gateway(Settings(host="127.0.0.1", http_port=0, data_dir=d, api_key="k", engine="echo"), carriers={})
        await gw.start()
        try:
            cs = []
            for _ in range(calls):
                c = await gw.calls.create(carrier="bench", direction="inbound", from_number="+15550000001",
                                          to_number="+15550000002", agent={"id": 0, "engine": "echo",
                                                                            "settings": {}})
                await c.attach(Leg(), 8000)
                cs.append(c)
            await asyncio.sleep(0.2)
            for c in cs:                          # drain what the set-up queued (CallStarted etc.)
                while c.bus is not None and not c.bus.outbound.empty():
                    c.bus.outbound.get_nowait()
            gc.collect()
            gc.freeze()
            starts = [i * 7 % len(pcm) for i in range(calls)]
            batch = mediabatch.for_loop(asyncio.get_running_loop())
            streams = [BatchedStream(c) for c in cs]
            t = time.process_time()
            for k in range(frames):
                if batched:
                    for i, st in enumerate(streams):
                        batch.feed_audio(st, pcm[(starts[i] + k) % len(pcm)])
                    await asyncio.sleep(0)        # the batch is delivered at the end of this loop iteration
                else:
                    for i, c in enumerate(cs):
                        c.feed_audio(pcm[(starts[i] + k) % len(pcm)])
                for c in cs:
                    item = await c.next_outbound()
                    while not isinstance(item, AudioFrame):
                        item = await c.next_outbound()
            cpu = time.process_time() - t
            gc.unfreeze()
            for c in cs:
                await c.end("user", "bench")
        finally:
            await gw.stop()
    return cpu / (calls * frames) * US


async def sip_path(calls: int, frames: int) -> tuple[float, float]:
    """µs of CPU per frame of `calls` SIP echo calls: real RtpSessions on real UDP sockets attached to real Calls,
    each tick one A-law packet handed to every session's `datagram_received` (the socket receive is timed apart)
    and the clock's tick run; outbound packets really go out through `sendto` to a socket of ours.
    Returns (whole path, clock and tick bookkeeping alone with nothing to send or play)."""
    alaw = [pcm16_to_alaw(ulaw_to_pcm16(f)) for f in speech_frames()]
    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    sink_addr = sink.getsockname()
    # not started: the bench drives the ticks (a started engine arms its own clock when a session opens)
    rtp = RtpEngine("127.0.0.1", 40000, 40000 + 4 * calls + 10)
    with tempfile.TemporaryDirectory(prefix="bench-frame-cost-") as d:
        gw = Gateway(Settings(host="127.0.0.1", http_port=0, data_dir=d, api_key="k", engine="echo"), carriers={})
        await gw.start()
        try:
            sessions, cs = [], []
            for _ in range(calls):
                c = await gw.calls.create(carrier="bench", direction="inbound", from_number="+15550000001",
                                          to_number="+15550000002", agent={"id": 0, "engine": "echo",
                                                                            "settings": {}})
                await c.attach(Leg(), 8000)
                s = await rtp.open_session()
                s.configure(sink_addr, "PCMA", 8, 101)
                s.attach(c)
                sessions.append(s)
                cs.append(c)
            await asyncio.sleep(0.2)
            gc.collect()
            gc.freeze()

            def drain() -> None:
                try:
                    while True:
                        sink.recv(2048)
                except BlockingIOError:
                    pass

            async def run(n: int, feed: bool) -> float:
                spent = 0.0
                for k in range(n):
                    seq = k
                    t = time.process_time()
                    rtp.now = loop.time()
                    if feed:
                        for i, s in enumerate(sessions):
                            payload = alaw[(i * 7 + k) % len(alaw)]
                            pkt = build_rtp(8, False, seq & 0xFFFF, seq * 160, 0x5000 + i, payload)
                            s.datagram_received(pkt, sink_addr)
                    for s in sessions:
                        s.tick()
                    await asyncio.sleep(0)            # the engine tasks run, as between two real ticks
                    spent += time.process_time() - t
                    if k % 20 == 0:
                        drain()                       # (not timed) keep the sink's receive buffer from filling
                return spent / (n * len(sessions)) * US

            whole = await run(frames, True)
            for s in sessions:                       # nothing to play or send: only the clock and tick bookkeeping
                s.call = None
                s.sending = False
            idle = await run(min(frames, 500), False)
            gc.unfreeze()
            for c in cs:
                await c.end("user", "bench")
        finally:
            await rtp.stop()
            await gw.stop()
            sink.close()
    return whole, idle


def e2e_twilio(calls: int, seconds: float) -> dict[str, Any]:
    """One step of bench/media_ws.py: a real `gateway serve` process, `calls` streams from this one."""
    from bench import media_ws
    ns = argparse.Namespace(steps=[calls], seconds=seconds, repeat=1, budget=600.0, no_write=True, nice=0,
                            no_pin=False)
    results: list[dict[str, Any]] = run_async(media_ws.main_async(ns))
    return results[0]


WS_WRITE = "ws frame write (straight to the transport, no socket)"


def pct(us: float) -> str:
    return f"{us * 50 / 1e4:.3f} %"


def per_core(us: float) -> str:
    return f"{int(1e6 / (50 * us))}" if us > 0 else "-"


def report(steps: dict[str, float], cores: tuple[float, float], sip: tuple[float, float], e2e: dict[str, Any] | None,
           args: argparse.Namespace) -> str:
    f = lambda v: f"{v:.2f}"  # noqa: E731
    core, core_batched = cores
    twilio_in = ["ws frame parse (aiohttp parser → text handler)", "JSON parse (safejson.loads_media + event check)",
                 "base64 decode", "μ-law decode"]
    core_steps = ["VAD / speech tap (energy gate + webrtcvad)",
                  "bus in, with its resampling (re-framer, frame, queue)",
                  "bus out, with its resampling (re-framer, frame, queue)",
                  "turn timing (agent frame on the timeline)"]
    twilio_out = ["μ-law encode", "base64 encode + message text", WS_WRITE]
    handoff = core - sum(steps[k] for k in core_steps)
    tcp = steps["TCP message: send + receive through the loop (websocket socket I/O)"]
    udp = steps["UDP datagram: send + receive through the loop"]
    tw_sum = sum(steps[k] for k in twilio_in + twilio_out) + core + 2 * tcp
    sip_whole, sip_idle = sip
    # the SIP whole-path figure holds everything but the socket receive; add that from the ping-pong
    sip_total = sip_whole + udp / 2
    rows: list[list[str]] = []

    def row(step: str, tw: float | None, sp: float | None, note: str = "") -> None:
        rows.append([step, "" if tw is None else f(tw), "" if sp is None else f(sp), note])

    row("**inbound**", None, None)
    row("websocket frame parse (aiohttp's parser, text handled in data_received)", steps[twilio_in[0]], None)
    row("JSON parse (`safejson.loads_media`: orjson for media events; event check)", steps[twilio_in[1]], None)
    row("base64 decode", steps[twilio_in[2]], None)
    row("μ-law / A-law decode", steps[twilio_in[3]], steps["A-law decode"])
    row("RTP parse", None, steps["RTP parse"])
    row("RTCP reception statistics", None, steps["RTCP reception stats"])
    row("jitter buffer put + pop", None, steps["jitter buffer put + pop"])
    row("VAD / speech tap (energy gate + webrtcvad)", steps[core_steps[0]], steps[core_steps[0]])
    row("resample 8 → 16 kHz", steps["resample 8 → 16 kHz"], steps["resample 8 → 16 kHz"],
        "inside the next row")
    row("bus in (re-framer, frame, hand-off; with the resampling)", steps[core_steps[1]], steps[core_steps[1]])
    row("engine hand-off + echo engine (callback in the reader, outbound queue, session)", handoff, handoff,
        f"whole core path of {args.calls} calls ({f(core)} µs) − its steps")
    row("**outbound**", None, None)
    row("resample 16 → 8 kHz", steps["resample 16 → 8 kHz"], steps["resample 16 → 8 kHz"], "inside the next row")
    row("bus out (re-framer, frame, queue; with the resampling)", steps[core_steps[2]], steps[core_steps[2]])
    row("turn timing (agent frame on the timeline)", steps[core_steps[3]], steps[core_steps[3]])
    row("μ-law / A-law encode", steps["μ-law encode"], steps["A-law encode"])
    row("base64 encode + outgoing message and frame header as bytes (`MediaStream._media_frame`, less its μ-law)",
        steps["base64 encode + message text"], None)
    row("websocket frame write (the whole frame straight to the transport)", steps[WS_WRITE], None)
    row("RTP build", None, steps["RTP build"])
    row("socket I/O through the event loop (one message in, one out)", 2 * tcp, udp,
        "loopback ping-pong, half a round trip per direction")
    sip_clock = sip_idle
    row("shared clock tick + session bookkeeping (RTCP due check, idle tick)", None, sip_clock,
        "ticks with nothing to play or send")
    row("**sum of the steps** (Twilio) / **whole SIP path in-process**", tw_sum, sip_total,
        f"SIP: {args.calls} RtpSessions on real sockets, ticked, + the datagram receive")
    rows.append(["% of one core per call (50 frames/s)", pct(tw_sum), pct(sip_total), ""])
    rows.append(["implied calls per core", per_core(tw_sum), per_core(sip_total), "CPU only, no latency margin"])
    tw_batched = tw_sum - core + core_batched
    rows.append([f"**Twilio, the frames of {args.calls} streams in one loop iteration batched** "
                 "(gateway/mediabatch.py: both resamplings in one numpy product per batch)",
                 f"{f(tw_batched)} ({per_core(tw_batched)} per core)", "",
                 f"whole core path batched {f(core_batched)} µs against {f(core)}; batches start at "
                 f"{BATCH_MIN} streams per loop iteration"])
    resampling = steps["resample 8 → 16 kHz"] + steps["resample 16 → 8 kHz"]
    rows.append(["the same with an 8 kHz engine (no resampling: `StreamResampler` passes equal rates through)",
                 f"{f(tw_sum - resampling)} ({per_core(tw_sum - resampling)} per core)",
                 f"{f(sip_total - resampling)} ({per_core(sip_total - resampling)} per core)",
                 "the two resampling rows drop out"])
    text = table(["step (one 20 ms frame, both directions)", "Twilio µs", "SIP µs", "note"], rows)
    lines = [
        "Echo engine at 16 kHz, carrier 8 kHz (every frame resampled up and back down, as in the load benchmarks). "
        f"Each step alone: CPU time over {args.frames} frames of tests/data/twilio_hello.ulaw (speech and pauses), "
        f"best of {args.rounds} interleaved rounds, the bare loop subtracted. Hand-off = whole in-process core path "
        f"({args.calls} calls' `feed_audio` → echo engine task → `next_outbound`, {args.core_frames} frames each) "
        "minus the steps in it (the echo engine takes each frame in the feeding call; what its `play` queues is "
        "taken with `next_outbound`, where a Twilio stream's waiting sender has it handed over instead). One 20 ms "
        "frame in and one out per call per 20 ms; 1 % of a core = 200 µs "
        "per frame.",
        "", text]
    if e2e is not None and e2e["echoed"]:
        measured = e2e["cpu_s"] / e2e["echoed"] * US       # one frame in and its echo out
        lines += ["", (f"**End to end** (one bench/media_ws.py step: `gateway serve` pinned to one core, {e2e['n']} "
                       f"Twilio streams for {args.e2e_seconds:g} s from another process, load average "
                       f"{e2e['load']:.1f}): the process used {e2e['cpu']:.0f} % of a core for {e2e['echoed']} frames "
                       f"echoed ({e2e['dropped']} lost) = **{f(measured)} µs per frame** ({pct(measured)} of a core "
                       f"per call, {per_core(measured)} calls per core by CPU). The steps above sum to {f(tw_sum)} µs: "
                       f"the other {f(measured - tw_sum)} µs are the event loop's iterations, aiohttp's connection "
                       "plumbing (data_received, the transport's writes), the call's engine and sender tasks "
                       "waking for anything but audio, timers and the gateway's other work (metrics, call-log "
                       "writer, GC), and cache misses that "
                       "in-process loops over hot data do not pay. Turnaround p99 "
                       f"{e2e['p99']:.1f} ms with the load generator itself late by {e2e['gen_late_p99']:.0f} ms (p99)"
                       + (": on this busy machine the step is a CPU measurement, not a latency result." if
                          e2e["gen_late_p99"] >= 20 else "."))]
    lines += ["", f"Load average at the start: {args.load:.1f} (a shared 2-core machine: figures are CPU time, so "
              "other processes inflate them less than wall time, but caches and frequency still vary)."]
    return "\n".join(lines)


async def measure(args: argparse.Namespace) -> tuple[dict[str, float], tuple[float, float], tuple[float, float]]:
    steps = await step_timings(args.frames, args.rounds)
    direct, batched = [], []
    for _ in range(args.rounds_whole):          # interleaved: both see the same minutes of this shared machine
        direct.append(await core_path(args.calls, args.core_frames))
        batched.append(await core_path(args.calls, args.core_frames, batched=True))
    core = (min(direct), min(batched))
    sips = [await sip_path(args.calls, args.core_frames) for _ in range(args.rounds_whole)]
    sip = (min(s[0] for s in sips), min(s[1] for s in sips))
    return steps, core, sip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=5000, help="frames per step timing")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the step timings (best is kept)")
    p.add_argument("--calls", type=int, default=50, help="simultaneous calls of the whole-path timings")
    p.add_argument("--core-frames", type=int, default=250, help="frames per call of the whole-path timings")
    p.add_argument("--rounds-whole", type=int, default=3, help="rounds of the whole-path timings (best is kept)")
    p.add_argument("--e2e", type=int, default=0, help="also run one bench/media_ws.py step with this many streams")
    p.add_argument("--e2e-seconds", type=float, default=4.0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args()
    args.load = os.getloadavg()[0]
    steps, core, sip = run_async(measure(args))
    e2e = e2e_twilio(args.e2e, args.e2e_seconds) if args.e2e else None
    body = report(steps, core, sip, e2e, args)
    print(body)
    if not args.no_write:
        write_section("frame_cost", "What each step costs per 20 ms frame", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
