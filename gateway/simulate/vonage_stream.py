"""Plays Vonage's side of the Voice API media websocket an NCCO `connect` asks for: `websocket:connected` with the
NCCO's content-type and headers, then binary 16-bit PCM frames of 20 ms; `notify` is answered with
`websocket:notify` (payload echoed) and `clear` with `websocket:cleared`. Used by `gateway simulate --via vonage`
and by the tests (tests/vonage_helpers.py).
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .wsclient import ReceivingClient


@dataclass
class VRx:
    frames: list[bytes] = field(default_factory=list)
    notifies: list[tuple[str, int]] = field(default_factory=list)   # (name, audio bytes before it)
    clears: list[int] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        return b"".join(self.frames)


class VonageStreamClient(ReceivingClient):
    """Vonage's side of the media websocket the NCCO asked for. `on_media(frame, arrival)` and `on_clear(arrival)`,
    when set, see each binary audio frame and clear as it arrives."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: dict[str, Any], *, gw_url: str,
                 on_media: Callable[[bytes, float], None] | None = None,
                 on_clear: Callable[[float], None] | None = None) -> None:
        super().__init__(on_media, on_clear)
        self.session = session
        self.endpoint = endpoint
        # the NCCO names the public URL; tests reach the same path on the gateway's loopback port
        path = endpoint["uri"].split("://", 1)[1].split("/", 1)[1]
        self.url = gw_url.rstrip("/") + "/" + path
        self.rx = VRx()

    async def connect(self, *, headers: dict[str, Any] | None = None, content_type: str | None = None) -> None:
        self.ws = await self.session.ws_connect(self.url)
        first = {"event": "websocket:connected",
                 "content-type": content_type or self.endpoint["content-type"],
                 **(self.endpoint.get("headers") or {} if headers is None else headers)}
        await self.conn.send_str(json.dumps(first))
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.conn:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.rx.frames.append(msg.data)
                    if self.on_media is not None:
                        self.on_media(msg.data, asyncio.get_running_loop().time())
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    m = json.loads(msg.data)
                    if m.get("action") == "notify":
                        self.rx.notifies.append((m["payload"]["name"], len(self.rx.audio)))
                        await self.conn.send_str(json.dumps({"event": "websocket:notify", "payload": m["payload"]}))
                    elif m.get("action") == "clear":
                        self.rx.clears.append(len(self.rx.audio))
                        if self.on_clear is not None:
                            self.on_clear(asyncio.get_running_loop().time())
                        await self.conn.send_str(json.dumps({"event": "websocket:cleared"}))
                await self._changed()
        finally:
            self.close_code = self.conn.close_code
            self.closed.set()
            await self._changed()

    async def play(self, pcm: bytes, frame: int, pace_every: int = 5) -> None:
        for i, off in enumerate(range(0, len(pcm), frame)):
            await self.conn.send_bytes(pcm[off:off + frame])
            if i % pace_every == pace_every - 1:
                await asyncio.sleep(0.01)

    async def dtmf(self, digit: str, duration: int = 260) -> None:
        await self.conn.send_str(json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": duration}))
