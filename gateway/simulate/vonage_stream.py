"""Plays Vonage's side of the Voice API media websocket an NCCO `connect` asks for: `websocket:connected` with the
NCCO's content-type and headers, then binary 16-bit PCM frames of 20 ms; `notify` is answered with
`websocket:notify` (payload echoed) and `clear` with `websocket:cleared`. Used by `gateway simulate --via vonage`
and by the tests (tests/vonage_helpers.py).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp


@dataclass
class VRx:
    frames: list[bytes] = field(default_factory=list)
    notifies: list[tuple[str, int]] = field(default_factory=list)   # (name, audio bytes before it)
    clears: list[int] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        return b"".join(self.frames)


class VonageStreamClient:
    """Vonage's side of the media websocket the NCCO asked for. `on_media(frame, arrival)` and `on_clear(arrival)`,
    when set, see each binary audio frame and clear as it arrives."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: dict[str, Any], *, gw_url: str,
                 on_media: Callable[[bytes, float], None] | None = None,
                 on_clear: Callable[[float], None] | None = None) -> None:
        self.on_media = on_media
        self.on_clear = on_clear
        self.session = session
        self.endpoint = endpoint
        # the NCCO names the public URL; tests reach the same path on the gateway's loopback port
        path = endpoint["uri"].split("://", 1)[1].split("/", 1)[1]
        self.url = gw_url.rstrip("/") + "/" + path
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.rx = VRx()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.cond = asyncio.Condition()
        self._reader: asyncio.Task | None = None

    async def connect(self, *, headers: dict[str, Any] | None = None, content_type: str | None = None) -> None:
        self.ws = await self.session.ws_connect(self.url)
        first = {"event": "websocket:connected",
                 "content-type": content_type or self.endpoint["content-type"],
                 **(self.endpoint.get("headers") or {} if headers is None else headers)}
        await self.ws.send_str(json.dumps(first))
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.rx.frames.append(msg.data)
                    if self.on_media is not None:
                        self.on_media(msg.data, asyncio.get_running_loop().time())
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    m = json.loads(msg.data)
                    if m.get("action") == "notify":
                        self.rx.notifies.append((m["payload"]["name"], len(self.rx.audio)))
                        await self.ws.send_str(json.dumps({"event": "websocket:notify", "payload": m["payload"]}))
                    elif m.get("action") == "clear":
                        self.rx.clears.append(len(self.rx.audio))
                        if self.on_clear is not None:
                            self.on_clear(asyncio.get_running_loop().time())
                        await self.ws.send_str(json.dumps({"event": "websocket:cleared"}))
                async with self.cond:
                    self.cond.notify_all()
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            async with self.cond:
                self.cond.notify_all()

    async def play(self, pcm: bytes, frame: int, pace_every: int = 5) -> None:
        for i, off in enumerate(range(0, len(pcm), frame)):
            await self.ws.send_bytes(pcm[off:off + frame])
            if i % pace_every == pace_every - 1:
                await asyncio.sleep(0.01)

    async def dtmf(self, digit: str, duration: int = 260) -> None:
        await self.ws.send_str(json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": duration}))

    async def wait_for(self, pred, timeout: float = 5.0) -> None:
        async def _w():
            async with self.cond:
                await self.cond.wait_for(lambda: pred(self.rx) or self.closed.is_set())
        await asyncio.wait_for(_w(), timeout)
        assert pred(self.rx), "socket closed before the expected messages"

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=2)
