"""bench/ws_client.py speaks RFC 6455 as another implementation (websockets) reads and writes it, and
bench/twilio_callers.py's callers built on it play Twilio Media Streams calls a real gateway accepts and echoes."""
from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import twilio_callers, ws_client  # noqa: E402


def server_reads(wire: bytes) -> list[Frame]:
    """The frames a websocket server (websockets' parser, masks required) reads from `wire`."""
    reader = StreamReader()
    reader.feed_data(wire)
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=True)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
    return frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 372, 1023, 1024, 1025, 65535, 65536, 70001])
def test_masked_frames_read_back_by_another_implementation(size):
    pool = ws_client.MaskPool(bits=4, span=1024)
    payload = os.urandom(size)
    wire = pool.frame(payload, ws_client.BINARY) + pool.frame(b"text", ws_client.TEXT) + pool.close(1000, b"bye")
    binary, text, close = server_reads(wire)
    assert (binary.opcode, binary.fin, binary.data) == (Opcode.BINARY, True, payload)
    assert (text.opcode, text.data) == (Opcode.TEXT, b"text")
    assert close.opcode is Opcode.CLOSE and Close.parse(close.data) == Close(1000, "bye")


def test_frames_are_masked_with_keys_from_the_pool():
    pool = ws_client.MaskPool(bits=6)
    keys = set()
    for _ in range(200):
        wire = pool.frame(b"x" * 300)
        assert wire[1] == 0x80 | 126                       # MASK bit and the 16-bit length
        key, masked = wire[4:8], wire[8:]
        assert masked != b"x" * 300 and ws_client.unmask(masked, key) == b"x" * 300
        keys.add(key)
    assert len(keys) > 20 and keys <= set(pool.keys)


def server_frames() -> tuple[bytes, list[tuple[int, bytes]]]:
    """A server's unmasked frames (websockets' serializer): a whole text message, a ping, a text message in three
    fragments with a ping between them, a 70 KB binary message (64-bit length), a close."""
    big = os.urandom(70_000)
    frames = [Frame(Opcode.TEXT, b'{"event":"media"}'), Frame(Opcode.PING, b"p1"),
              Frame(Opcode.TEXT, b"one ", fin=False), Frame(Opcode.CONT, b"two ", fin=False),
              Frame(Opcode.PING, b"p2"), Frame(Opcode.CONT, b"three"), Frame(Opcode.BINARY, big),
              Frame(Opcode.CLOSE, Close(1000, "stream over").serialize())]
    wire = b"".join(f.serialize(mask=False) for f in frames)
    expected = [(ws_client.TEXT, b'{"event":"media"}'), (ws_client.PING, b"p1"), (ws_client.PING, b"p2"),
                (ws_client.TEXT, b"one two three"), (ws_client.BINARY, big),
                (ws_client.CLOSE, Close(1000, "stream over").serialize())]
    return wire, expected


@pytest.mark.parametrize("chunk", [1, 3, 7, 100, 1 << 20])
def test_reader_splits_reassembles_and_passes_control_frames_whatever_the_chunks(chunk):
    wire, expected = server_frames()
    reader = ws_client.FrameReader()
    got = []
    for i in range(0, len(wire), chunk):
        got += reader.feed(wire[i:i + chunk])
    assert got == expected and reader.buf == b""


@pytest.mark.parametrize("bad", [
    Frame(Opcode.TEXT, b"masked").serialize(mask=True),                        # servers must not mask
    Frame(Opcode.CONT, b"nothing to continue").serialize(mask=False),
    bytes([0x09, 2]) + b"pi",                                                    # a ping without FIN
    bytes([0x81 | 0x40, 1]) + b"x",                                              # RSV1 without an extension
])
def test_reader_refuses_what_a_server_must_not_send(bad):
    with pytest.raises(ws_client.ProtocolError):
        ws_client.FrameReader().feed(bad)


def test_handshake_against_a_server_and_a_wrong_accept_refused():
    key = ws_client.new_key()
    assert len(base64.b64decode(key)) == 16
    wire = ws_client.handshake_request("127.0.0.1:8080", "/twilio/media", key, {"X-Twilio-Signature": "c2ln"})
    server = ServerProtocol()
    server.receive_data(wire)
    [request] = server.events_received()
    assert isinstance(request, Request) and request.path == "/twilio/media"
    assert request.headers["X-Twilio-Signature"] == "c2ln"
    server.send_response(server.accept(request))
    answer = b"".join(server.data_to_send()) + b"\x81\x02hi"                      # a frame right behind it
    assert ws_client.handshake_response(answer[:20], key) == 0                    # incomplete: wait for more
    used = ws_client.handshake_response(answer, key)
    assert answer[used:] == b"\x81\x02hi"
    with pytest.raises(ws_client.HandshakeError, match="Accept"):
        ws_client.handshake_response(answer, ws_client.new_key())
    with pytest.raises(ws_client.HandshakeError, match="403"):
        ws_client.handshake_response(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", key)


def test_media_messages_have_twilios_fields():
    caller = twilio_callers.Caller({"n": 1}, 0, 0, ws_client.MaskPool(bits=2))
    payload = base64.b64encode(bytes(160))
    m = json.loads(caller.media % (5, 4, 60, payload))
    assert m == {"event": "media", "sequenceNumber": "5", "streamSid": caller.sid,
                 "media": {"track": "inbound", "chunk": "4", "timestamp": "60", "payload": payload.decode()}}


def test_built_frames_are_twilios_media_messages_in_order():
    """`Caller.build`: frame i, as a server unmasks it, is Twilio's media message number i + 2 (chunk i + 1,
    timestamp 20·i ms) with the recording's frames from the call's starting point, wrapping at its end."""
    payloads = [base64.b64encode(bytes([k]) * 160) for k in range(3)]
    caller = twilio_callers.Caller({"n": 1}, 0, 2, ws_client.MaskPool(bits=2))
    caller.build(payloads, 5)
    frames = server_reads(b"".join(caller.frames))
    assert [f.opcode for f in frames] == [Opcode.TEXT] * 5
    for i, f in enumerate(frames):
        m = json.loads(f.data)
        assert (m["event"], m["sequenceNumber"], m["streamSid"]) == ("media", str(i + 2), caller.sid)
        assert m["media"] == {"track": "inbound", "chunk": str(i + 1), "timestamp": str(20 * i),
                              "payload": payloads[(2 + i) % 3].decode()}


def test_arrivals_decode_the_kernels_timespecs():
    stamps = [twilio_callers._TIMESPEC.pack(1_764_000_000, 250_000_000), twilio_callers._now_timespec()]
    got = twilio_callers.arrivals(stamps)
    assert got[0] == pytest.approx(1_764_000_000.25, abs=1e-6)
    assert abs(got[1] - time.time()) < 5
    assert twilio_callers.arrivals([]).size == 0


def _server_frame(payload: bytes, opcode: int = ws_client.TEXT, fin: bool = True) -> bytes:
    """An unmasked server frame (RFC 6455 §5.2), 7- or 16-bit length."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode, n]) if n < 126 else bytes([(0x80 if fin else 0) | opcode, 126,
                                                                            n >> 8, n & 0xFF])
    return head + payload


def test_caller_counts_echoes_whatever_the_reads_bring():
    """`Caller.receive`: one whole echoed media frame per read (the fast path), and everything else through the
    FrameReader: a bad payload size counted bad, other events ignored, several frames or half a frame per read,
    a ping answered — the same counts either way."""
    import socket

    caller = twilio_callers.Caller({"n": 1}, 0, 0, ws_client.MaskPool(bits=2))
    ours, server = socket.socketpair()
    ours.setblocking(False)
    caller.sock = ours
    good = caller.media % (2, 1, 0, base64.b64encode(bytes(160)))
    short = caller.media % (3, 2, 20, base64.b64encode(bytes(80)))
    mark = b'{"event":"mark","sequenceNumber":"4","mark":{"name":"m"},"streamSid":"' + caller.sid.encode() + b'"}'

    def deliver(data: bytes) -> None:
        server.sendall(data)
        assert caller.receive() is True

    try:
        deliver(_server_frame(good))                                   # the fast path
        assert (len(caller.received), caller.bad) == (1, 0)
        deliver(_server_frame(short))
        assert (len(caller.received), caller.bad) == (2, 1)
        deliver(_server_frame(mark))
        assert (len(caller.received), caller.bad) == (2, 1)
        deliver(_server_frame(good) + _server_frame(good))             # two in one read
        assert len(caller.received) == 4
        whole = _server_frame(good)
        deliver(whole[:100])                                           # half a frame: nothing yet
        assert len(caller.received) == 4
        deliver(whole[100:])
        assert len(caller.received) == 5
        deliver(_server_frame(good[:50], fin=False) + _server_frame(good[50:], ws_client.CONTINUATION))
        assert (len(caller.received), caller.bad) == (6, 1)           # a fragmented echo, reassembled
        deliver(_server_frame(b"hb", ws_client.PING))
        pong = server.recv(100)
        assert pong[0] == 0x80 | ws_client.PONG and ws_client.unmask(pong[6:], pong[2:6]) == b"hb"
        assert caller.error is None
    finally:
        ours.close()
        server.close()


async def test_callers_play_twilio_calls_a_real_gateway_echoes(tmp_path):
    """Four calls over two caller processes for one second each against `gateway serve` (echo engine, SQLite):
    every frame echoed with a 160-byte payload, no call error, the generator's CPU counted."""
    from bench._gateway_proc import free_port, start_gateway, wait_healthy
    from bench.media_ws import ACCOUNT, NUMBER, RECORDING, TOKEN, prepare_db

    await prepare_db(str(tmp_path / "gw.db"))
    port = free_port()
    proc = start_gateway(str(tmp_path), port, None, "twilio")
    try:
        await wait_healthy(port, proc, timeout=60)
        ulaw = RECORDING.read_bytes()
        payloads = [base64.b64encode(ulaw[i:i + 160]).decode() for i in range(0, 160 * 60, 160)]
        r = await twilio_callers.run_step(port, 4, 1.0, payloads, procs=2, account=ACCOUNT, token=TOKEN,
                                          number=NUMBER, drain=60.0)
    finally:
        proc.terminate()
        proc.wait(30)
    assert (r["frames"], r["dropped"], r["bad"], r["errors"], r["procs"]) == (200, 0, 0, 0, 2)
    assert r["generator_cpu"] > 0 and r["p50"] > 0
    assert r["generator_cpu"] == pytest.approx(r["generator_user"] + r["generator_sys"])
