"""carriers/wsdirect.py against a real websocket client on loopback: text messages handled in `data_received`, in
order with what was queued before; pings, the close handshake and handler errors still reach the reader; frames
written straight to the transport parse at the client."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from carriers.wsdirect import DirectWebSocket, StopReading, handler_error, read_messages
from sipp import wait_for


class Server:
    """One aiohttp app on 127.0.0.1 whose /ws handler is `self.handler(ws)`."""

    def __init__(self) -> None:
        self.handler: Callable[[DirectWebSocket], Any] | None = None
        self.done = asyncio.Event()
        self.port = 0

    async def ws(self, request: web.Request) -> web.StreamResponse:
        ws = DirectWebSocket(compress=False)
        await ws.prepare(request)
        try:
            assert self.handler is not None
            await self.handler(ws)
        finally:
            self.done.set()
        return ws

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    app = web.Application()
    app.router.add_get("/ws", s.ws)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    s.port = site._server.sockets[0].getsockname()[1]   # type: ignore[union-attr]
    try:
        yield s
    finally:
        await runner.cleanup()


_sockets: list[DirectWebSocket] = []


@pytest.fixture(autouse=True)
def _track_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember each DirectWebSocket prepared, so a test can look at what aiohttp queued for it."""
    _sockets.clear()
    prepare = DirectWebSocket.prepare

    async def tracked(self: DirectWebSocket, request: Any) -> Any:
        _sockets.append(self)
        return await prepare(self, request)

    monkeypatch.setattr(DirectWebSocket, "prepare", tracked)


async def test_text_is_handled_in_order_without_receive_and_pings_are_answered(server: Server) -> None:
    got: list[str] = []
    queued_first: list[str] = []
    handled_directly = asyncio.Event()
    release = asyncio.Event()

    async def handler(ws: DirectWebSocket) -> None:
        await release.wait()                       # messages 0-2 arrive while nobody reads: they are queued
        assert not ws.on_messages(got.append)          # refused while queued messages wait for receive()
        while not ws.on_messages(got.append):
            msg = await ws.receive()
            queued_first.append(msg.data)
            got.append(msg.data)
        handled_directly.set()
        msg = await ws.receive()                   # only non-text messages come here now: the client's close
        assert msg.type is WSMsgType.CLOSE

    server.handler = handler
    async with connect(server.url, compression=None) as client:
        for i in range(3):
            await client.send(f"m{i}")
        await wait_for(lambda: bool(_sockets) and _sockets[-1]._reader.pending() >= 3)   # type: ignore[union-attr]
        release.set()
        await asyncio.wait_for(handled_directly.wait(), 10)
        for i in range(3, 200):
            await client.send(f"m{i}")
        pong = await client.ping(b"still there?")
        await asyncio.wait_for(pong, 10)           # answered by aiohttp while the handler takes the text
        await wait_for(lambda: len(got) == 200)
    await asyncio.wait_for(server.done.wait(), 10)
    assert got == [f"m{i}" for i in range(200)]
    assert queued_first == ["m0", "m1", "m2"]


async def test_handler_errors_and_stop_reach_the_reader_and_the_close_code_is_ours(server: Server) -> None:
    seen: list[str] = []
    outcome: list[object] = []

    def on_text(text: str) -> None:
        if text == "bad":
            raise ValueError("bad message")
        if text == "stop":
            raise StopReading
        seen.append(text)

    async def handler(ws: DirectWebSocket) -> None:
        assert ws.on_messages(on_text)
        while True:
            msg = await ws.receive()
            err = handler_error(msg)
            outcome.append(err)
            if err is not None:
                break
        assert isinstance(err, ValueError)
        assert ws.on_messages(on_text)                 # the handler was dropped; it may be set again
        while handler_error(msg := await ws.receive()) is None:
            pass
        outcome.append(handler_error(msg))
        await ws.close(code=4002, message=b"done")

    server.handler = handler
    async with connect(server.url, compression=None) as client:
        await client.send("a")
        await client.send("bad")
        await wait_for(lambda: len(outcome) == 1)
        await client.send("b")
        await client.send("stop")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4002
    assert seen == ["a", "b"]
    assert isinstance(outcome[-1], StopReading)


async def test_frames_written_straight_to_the_transport_parse_at_the_client(server: Server) -> None:
    """Every payload length form of RFC 6455 §5.2 (7-bit, 16-bit, 64-bit), text and binary."""
    texts = ["x", "é" * 62, "y" * 125, "z" * 126, "media " * 60, "v" * 65535, "w" * 70000]
    blobs = [b"", b"\x01" * 125, b"\x02" * 126, bytes(range(256)) * 256, b"\x03" * 70000]
    results: list[bool] = []
    after_close: list[bool] = []

    async def handler(ws: DirectWebSocket) -> None:
        ws.write_limit = 1 << 24                   # (so that a slow reader on a busy box cannot make one decline)
        results.extend(ws.write_text_nowait(t) for t in texts)
        results.extend(ws.write_bytes_nowait(b) for b in blobs)
        await ws.receive()
        after_close.append(ws.write_text_nowait("late"))
        after_close.append(ws.write_bytes_nowait(b"late"))

    server.handler = handler
    async with connect(server.url, compression=None, max_size=2 ** 20) as client:
        got = [await asyncio.wait_for(client.recv(), 10) for _ in texts + blobs]   # type: ignore[operator]
    await asyncio.wait_for(server.done.wait(), 10)
    assert got == texts + blobs                                                    # type: ignore[operator]
    assert results == [True] * (len(texts) + len(blobs))
    assert after_close == [False, False]


async def test_read_messages_gives_text_and_binary_in_order_then_stops(server: Server) -> None:
    """The shared reader: messages queued before it starts and those after go to the same handlers in arrival
    order; StopReading ends it quietly, another exception is raised to its caller, a close ends it."""
    got: list[object] = []
    release = asyncio.Event()
    outcome: list[object] = []

    def on_text(text: str) -> None:
        if text == "stop":
            raise StopReading
        if text == "bad":
            raise ValueError("bad message")
        got.append(text)

    async def handler(ws: DirectWebSocket) -> None:
        await release.wait()                       # the first messages are queued, then read by receive()
        await read_messages(ws, on_text, got.append)
        outcome.append("stopped")
        try:
            await read_messages(ws, on_text, got.append)
        except ValueError as e:
            outcome.append(e)
        await read_messages(ws, on_text, got.append)
        outcome.append("closed")

    server.handler = handler
    async with connect(server.url, compression=None) as client:
        await client.send("t0")
        await client.send(b"b0")
        await wait_for(lambda: bool(_sockets) and _sockets[-1]._reader.pending() >= 2)   # type: ignore[union-attr]
        release.set()
        for i in range(1, 100):
            await client.send(f"t{i}")
            await client.send(f"b{i}".encode())
        await client.send("stop")
        await wait_for(lambda: outcome == ["stopped"])
        await client.send("bad")
        await wait_for(lambda: len(outcome) == 2)
    await asyncio.wait_for(server.done.wait(), 10)
    want: list[object] = []
    for i in range(100):
        want += [f"t{i}", f"b{i}".encode()]
    assert got == want
    assert isinstance(outcome[1], ValueError) and outcome[2] == "closed"
