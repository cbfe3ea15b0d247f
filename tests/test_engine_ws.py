"""Websocket engine bridge, connect mode: a real websockets engine server on 127.0.0.1 and a real Gateway.

Each test drives one call through a tiny in-test carrier leg and scripts the engine side.
"""
from __future__ import annotations

import asyncio
import json
import socket

import pytest
import websockets
from websockets.asyncio.server import serve

from gateway.frames import (
    AmdResult,
    AnsweredBy,
    AudioFrame,
    Clear,
    Dtmf,
    HangupSource,
    Mark,
    SendDtmf,
    SpeechActivity,
    TransferResult,
)
from sipp import wait_for
from test_api_fakes import FakeLeg

T = 5.0  # bound on every wait


class Engine:
    """A websockets server whose per-connection behaviour is the test's `script(ws, engine)`."""

    def __init__(self, script) -> None:
        self.script = script
        self.connections = 0
        self.close_code: int | None = None
        self.done = asyncio.Event()

    async def _handler(self, ws) -> None:
        self.connections += 1
        try:
            await self.script(ws, self)
        except websockets.ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()
            self.close_code = ws.close_code
            self.done.set()

    async def __aenter__(self):
        self.server = await serve(self._handler, "127.0.0.1", 0, compression=None)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    def url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/voice{query}"


async def start_call(make_gateway, engine_spec: str, rate: int = 8000, **agent_settings):
    gw = await make_gateway()
    agent = await gw.store.create_agent({"name": "bot", "engine": engine_spec,
                                         "settings": {"transfer": {"number": "+15550009999"}}})
    call = await gw.calls.create(carrier="test", direction="inbound", from_number="+15550001111",
                                 to_number="+15550002222", agent=agent, metadata={"customer": "42"},
                                 carrier_sid="CA-test-1",
                                 call_context={"order": "A-1"})
    leg = FakeLeg()
    await call.attach(leg, rate)
    return gw, call, leg


async def recv_json(ws, kind: str | None = None) -> dict:
    """Next JSON message from the gateway (binary audio in between is skipped)."""
    while True:
        data = await asyncio.wait_for(ws.recv(), T)
        if isinstance(data, str):
            msg = json.loads(data)
            if kind is None or msg["type"] == kind:
                return msg


async def next_out(call, timeout: float = T):
    return await asyncio.wait_for(call.next_outbound(), timeout)


async def wait_finished(gw, call) -> dict:
    """Wait until the call is fully closed (log row written) and return its log row."""
    async def gone():
        while call.id in gw.calls.active:
            await asyncio.sleep(0.01)
    drain = asyncio.create_task(_drain(call))
    try:
        await asyncio.wait_for(gone(), T)
    finally:
        drain.cancel()
    return await gw.store.get_call(call.log_id)


async def _drain(call) -> None:
    while True:
        await call.next_outbound()


def pcm_frames(n: int, rate: int = 8000) -> list[bytes]:
    size = rate // 50 * 2
    return [bytes([(i * 7 + k) % 251 for k in range(size)]) for i in range(n)]


# -- audio --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [8000, 16000])
async def test_engine_receives_start_and_frames_and_its_audio_comes_back(make_gateway, rate):
    got: dict = {"frames": []}

    async def script(ws, engine):
        got["start"] = json.loads(await ws.recv())
        while len(got["frames"]) < 10:
            data = await ws.recv()
            if isinstance(data, bytes):
                got["frames"].append(data)
                await ws.send(data)  # echo
        got["end"] = await recv_json(ws, "hangup")

    async with Engine(script) as engine:
        # carrier at 8 kHz; engine at `rate` (the gateway converts)
        gw, call, leg = await start_call(make_gateway, engine.url(f"?sample_rate={rate}"))
        sent = pcm_frames(10)
        for f in sent:
            call.feed_audio(f)
        back = []
        while len(back) < 10:
            item = await next_out(call)
            assert isinstance(item, AudioFrame) and item.sample_rate == 8000
            back.append(item.pcm)
        start = got["start"]
        assert start["type"] == "start" and start["protocol"] == 1
        assert start["call_id"] == call.id and start["carrier"] == "test" and start["direction"] == "inbound"
        assert start["carrier_call_id"] == "CA-test-1"
        assert start["from"] == "+15550001111" and start["to"] == "+15550002222"
        assert start["agent_id"] == call.agent["id"]
        assert start["custom_parameters"] == {"customer": "42"} and start["call_context"] == {"order": "A-1"}
        assert start["audio"] == {"encoding": "pcm_s16le", "sample_rate": rate, "channels": 1, "frame_ms": 20}
        assert all(len(f) == rate // 50 * 2 for f in got["frames"])  # 20 ms at the engine's rate
        if rate == 8000:  # no conversion anywhere: bit-exact both ways
            assert got["frames"] == sent and back == sent
        await call.end(HangupSource.USER, "caller_left")
        await asyncio.wait_for(engine.done.wait(), T)
        assert got["end"] == {"type": "hangup", "source": "user", "reason": "caller_left"}
        assert engine.close_code == 1000


async def test_odd_sized_engine_audio_is_reframed(make_gateway):
    async def script(ws, engine):
        await ws.recv()
        blob = bytes(range(256)) * 5  # 1280 bytes = 4 frames at 8 kHz, sent in odd pieces
        for piece in (blob[:7], blob[7:333], blob[333:1001], blob[1001:]):
            await ws.send(piece)
        await ws.wait_closed()

    async with Engine(script) as engine:
        gw, call, leg = await start_call(make_gateway, engine.url("?sample_rate=8000"))
        out = b"".join([(await next_out(call)).pcm for _ in range(4)])
        assert out == bytes(range(256)) * 5
        await call.end(HangupSource.USER, "done")


# -- control messages ---------------------------------------------------------------------------------------------
async def test_gateway_events_reach_the_engine(make_gateway):
    got: list = []

    async def script(ws, engine):
        await ws.recv()
        while len(got) < 4:
            got.append(await recv_json(ws))
        await ws.wait_closed()

    async with Engine(script) as engine:
        gw, call, leg = await start_call(make_gateway, engine.url("?sample_rate=8000"))
        call.feed_event(Dtmf("5", 120))
        call.feed_event(SpeechActivity(True))
        await call.set_amd(AmdResult(AnsweredBy.HUMAN, 1800))
        await call.transfer_finished(TransferResult("+15550003333", "busy"))
        await wait_for(lambda: len(got) == 4, T, 0.01)
        assert got == [
            {"type": "dtmf", "digit": "5", "duration_ms": 120},
            {"type": "speech", "speaking": True},
            {"type": "amd", "answered_by": "human", "duration_ms": 1800},
            {"type": "transfer_result", "target": "+15550003333", "outcome": "busy"},
        ]
        await call.end(HangupSource.USER, "done")


async def test_dtmf_mark_transfer_and_hangup_from_engine(make_gateway):
    got: dict = {}

    async def script(ws, engine):
        await ws.recv()
        await ws.send(json.dumps({"type": "dtmf", "digits": "12#"}))
        await ws.send(bytes(320 * 3))
        await ws.send(json.dumps({"type": "mark", "name": "said-hello"}))
        got["mark"] = await recv_json(ws, "mark")
        await ws.send(json.dumps({"type": "transfer"}))  # no number: the agent's configured one
        got["transfer"] = await recv_json(ws, "transfer_result")
        await ws.send(json.dumps({"type": "transfer", "number": "+15550004444"}))
        await recv_json(ws, "transfer_result")
        await ws.send(json.dumps({"type": "hangup", "reason": "goodbye_said"}))
        got["hangup"] = await recv_json(ws, "hangup")

    async with Engine(script) as engine:
        gw, call, leg = await start_call(make_gateway, engine.url("?sample_rate=8000"))
        assert await next_out(call) == SendDtmf("12#")
        for _ in range(3):
            assert isinstance(await next_out(call), AudioFrame)
        mark = await next_out(call)
        assert mark == Mark("said-hello")
        call.feed_event(Mark("said-hello"))  # the carrier has played the audio before it
        row = await wait_finished(gw, call)
        await asyncio.wait_for(engine.done.wait(), T)
    assert got["mark"] == {"type": "mark", "name": "said-hello"}
    assert [t.number for t in leg.transfers] == ["+15550009999", "+15550004444"]
    assert got["transfer"] == {"type": "transfer_result", "target": "+15550009999", "outcome": "completed"}
    assert leg.hangups == ["goodbye_said"]
    assert got["hangup"] == {"type": "hangup", "source": "agent", "reason": "goodbye_said"}
    assert row["hangup_source"] == "agent" and row["hangup_reason"] == "goodbye_said"
    assert engine.close_code == 1000


async def test_clear_drops_queued_audio_at_once(make_gateway):
    bus_full = asyncio.Event()

    async def script(ws, engine):
        await ws.recv()
        await ws.send(bytes(320 * 1000))  # 20 s of audio sent ahead of real time (more than the bus holds)
        await ws.send(json.dumps({"type": "mark", "name": "before-clear"}))
        await asyncio.wait_for(bus_full.wait(), T)
        await ws.send(json.dumps({"type": "clear"}))  # barge-in: must not wait for those 20 s to play
        await ws.send(bytes(320 * 2))
        await ws.send(json.dumps({"type": "mark", "name": "after-clear"}))
        await ws.wait_closed()

    async with Engine(script) as engine:
        gw, call, leg = await start_call(make_gateway, engine.url("?sample_rate=8000"))
        # nothing is played yet: the carrier has not read a single frame
        await wait_for(lambda: call.bus.outbound.full(), T, 0.01)
        bus_full.set()
        await wait_for(lambda: Mark("after-clear") in call.bus.outbound._queue, T, 0.01)
        items = []
        while not items or items[-1] != Mark("after-clear"):
            items.append(await next_out(call))
        assert Clear() in items
        # the 20 s were dropped (from the bus and from the bridge), the mark placed before the clear still comes
        # back (as Twilio does on clear), and only the 2 frames sent after the clear are played
        assert Mark("before-clear") in items
        after = items[items.index(Clear()):]
        assert [type(i) for i in after if isinstance(i, AudioFrame)] == [AudioFrame] * 2
        assert sum(isinstance(i, AudioFrame) for i in items) == 2
        assert call.bus.counters.dropped_out == call.bus.outbound.maxsize
        await call.end(HangupSource.USER, "done")


@pytest.mark.parametrize("say_hangup", [True, False])
async def test_audio_sent_before_the_engine_leaves_is_still_played(make_gateway, say_hangup):
    async def script(ws, engine):
        await ws.recv()
        await ws.send(bytes([9]) * 320 * 25)  # a half-second goodbye
        if say_hangup:
            await ws.send(json.dumps({"type": "hangup", "reason": "goodbye"}))
        await ws.close()  # and leave at once

    async with Engine(script) as engine:
        gw, call, leg = await start_call(make_gateway, engine.url("?sample_rate=8000"))
        await asyncio.wait_for(engine.done.wait(), T)
        played = []
        drain = asyncio.create_task(_collect(call, played))
        await wait_for(lambda: call.id not in gw.calls.active, T, 0.01)
        drain.cancel()
    assert [i.pcm for i in played if isinstance(i, AudioFrame)] == [bytes([9]) * 320] * 25
    assert leg.hangups == ["goodbye" if say_hangup else "engine_disconnected"]


async def _collect(call, items: list) -> None:
    while True:
        items.append(await call.next_outbound())


# -- broken engines -----------------------------------------------------------------------------------------------
async def test_connection_refused_hangs_up_engine_unreachable(make_gateway):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    gw, call, leg = await start_call(make_gateway, f"ws://127.0.0.1:{port}/voice")
    row = await wait_finished(gw, call)
    assert leg.hangups == ["engine_unreachable"]
    assert row["hangup_source"] == "agent" and row["hangup_reason"] == "engine_unreachable"


async def test_handshake_rejected_hangs_up_engine_unreachable(make_gateway):
    async def reject(connection, request):
        return connection.respond(403, "no\n")

    server = await serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=reject)
    try:
        port = server.sockets[0].getsockname()[1]
        gw, call, leg = await start_call(make_gateway, f"ws://127.0.0.1:{port}/voice")
        row = await wait_finished(gw, call)
        assert row["hangup_reason"] == "engine_unreachable"
    finally:
        server.close()


async def test_silent_tcp_peer_times_out_as_engine_unreachable(make_gateway, monkeypatch):
    from gateway.engine.ws_bridge import WebSocketEngine

    monkeypatch.setattr(WebSocketEngine, "connect_timeout", 0.3)
    accepted = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)  # never answers
    try:
        port = server.sockets[0].getsockname()[1]
        gw, call, leg = await start_call(make_gateway, f"ws://127.0.0.1:{port}/voice")
        row = await wait_finished(gw, call)
        assert accepted and row["hangup_reason"] == "engine_unreachable"
    finally:
        for w in accepted:
            w.close()
        server.close()


async def test_engine_closing_mid_call_hangs_up_engine_disconnected(make_gateway):
    async def script(ws, engine):
        await ws.recv()
        await ws.recv()  # first audio frame
        await ws.close(1011, "crashed")

    async with Engine(script) as engine:
        gw, call, leg = await start_call(make_gateway, engine.url("?sample_rate=8000"))
        call.feed_audio(bytes(320))
        row = await wait_finished(gw, call)
    assert leg.hangups == ["engine_disconnected"]
    assert row["hangup_source"] == "agent" and row["hangup_reason"] == "engine_disconnected"


@pytest.mark.parametrize("message,code", [
    ("this is not json{", 1007),
    ("[1, 2, 3]", 1007),
    (json.dumps({"type": "dance"}), 1003),
    (json.dumps({"no_type": True}), 1003),
    (json.dumps({"type": "dtmf", "digits": "12x"}), 1008),
    (json.dumps({"type": "mark"}), 1008),
    (json.dumps({"type": "transfer", "number": 5}), 1008),
    (json.dumps({"type": "hangup", "reason": "x" * 201}), 1008),
])
async def test_bad_control_message_closes_with_code_and_hangs_up(make_gateway, message, code):
    async def script(ws, engine):
        await ws.recv()
        await ws.send(message)
        await ws.wait_closed()

    async with Engine(script) as engine:
        gw, call, leg = await start_call(make_gateway, engine.url("?sample_rate=8000"))
        row = await wait_finished(gw, call)
        await asyncio.wait_for(engine.done.wait(), T)
    assert engine.close_code == code
    assert leg.hangups == ["engine_protocol_error"]
    assert row["hangup_source"] == "agent" and row["hangup_reason"] == "engine_protocol_error"


async def test_oversized_message_is_a_protocol_error(make_gateway):
    async def script(ws, engine):
        await ws.recv()
        await ws.send(bytes(4 * 1024 * 1024 + 2))
        await ws.wait_closed()

    async with Engine(script) as engine:
        gw, call, leg = await start_call(make_gateway, engine.url("?sample_rate=8000"))
        row = await wait_finished(gw, call)
        await asyncio.wait_for(engine.done.wait(), T)
    assert engine.close_code == 1009
    assert row["hangup_reason"] == "engine_protocol_error"


async def test_invalid_utf8_text_is_a_protocol_error(make_gateway):
    async def script(ws, engine):
        await ws.recv()
        # a text frame whose payload is not UTF-8, sent at the protocol layer
        from websockets.frames import Frame, Opcode
        ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
        ws.send_data()
        await ws.wait_closed()

    async with Engine(script) as engine:
        gw, call, leg = await start_call(make_gateway, engine.url("?sample_rate=8000"))
        row = await wait_finished(gw, call)
        await asyncio.wait_for(engine.done.wait(), T)
    assert engine.close_code == 1007
    assert row["hangup_reason"] == "engine_protocol_error"


def test_engine_spec_validation():
    from gateway.engine import EngineRegistry

    reg = EngineRegistry()
    for good in ("echo", "greeting", "ws://e:9000/x", "wss://e/x?sample_rate=24000", "accept", "accept:sales",
                 "accept:sales?sample_rate=8000"):
        reg.validate(good)
    for bad, words in (("ws://e/x?sample_rate=44100", "sample_rate"), ("ws:///nohost", "host"),
                       ("accept:bad pool", "pool"), ("telnet://x", "unknown engine")):
        with pytest.raises(ValueError, match=words):
            reg.validate(bad)
    assert reg.resolve("ws://e/x?sample_rate=24000").sample_rate == 24000
    assert reg.resolve("ws://e/x").sample_rate == 16000
