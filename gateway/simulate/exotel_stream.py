"""Plays Exotel's side of a Voicebot applet websocket against /exotel/media: `connected`, `start` (snake_case, numbers
as strings), `media` chunks, `dtmf`, `stop`; marks are echoed as they arrive. Used by `gateway simulate --via exotel`
and by the tests (tests/exotel_helpers.py). Protocol sources: carriers/exotel.py.
"""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from voicecodecs import pcm16_to_ulaw

from .wsclient import ReceivingClient


@dataclass
class Received:
    chunks: list[bytes] = field(default_factory=list)
    marks: list[tuple[str, int]] = field(default_factory=list)      # (name, audio bytes received before it)
    clears: list[int] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        return b"".join(self.chunks)


class ExotelStreamClient(ReceivingClient):
    """Exotel's side of one Voicebot websocket. `on_media(payload, arrival)` and `on_clear(arrival)`, when set, see
    each audio chunk and clear as it arrives."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, echo_marks: bool = True,
                 headers: dict[str, str] | None = None,
                 on_media: Callable[[bytes, float], None] | None = None,
                 on_clear: Callable[[float], None] | None = None) -> None:
        super().__init__(on_media, on_clear)
        self.session = session
        self.url = url
        self.headers = headers or {}
        self.echo_marks = echo_marks
        self.rx = Received()
        self.stream_sid = "MZ" + secrets.token_hex(8)
        self.close_reason: str = ""
        self._seq = 0
        self.codec = "pcm16"
        self.call_sid = self.account_sid = ""

    async def connect(self) -> ExotelStreamClient:
        self.ws = await self.session.ws_connect(self.url, headers=self.headers, autoclose=True)
        self._reader = asyncio.create_task(self._read())
        await self.send({"event": "connected"})
        return self

    async def send(self, obj: dict[str, Any]) -> None:
        self._seq += 1
        if obj.get("event") != "connected":
            obj = {"sequence_number": str(self._seq), "stream_sid": self.stream_sid, **obj}
        await self.conn.send_str(json.dumps(obj))

    async def start(self, call_sid: str = "CA0001", *, frm: str = "09876543210", to: str = "08047491899",
                    account_sid: str = "", encoding: str | None = "audio/x-raw",
                    sample_rate: str | None = "8000", custom: dict[str, str] | None = None) -> None:
        mf: dict[str, str] = {}
        if encoding is not None:
            mf["encoding"] = encoding
        if sample_rate is not None:
            mf["sample_rate"] = sample_rate
        if encoding and "mulaw" in encoding:
            self.codec = "ulaw"
        else:
            mf["bit_rate"] = "16"
        self.call_sid, self.account_sid = call_sid, account_sid
        await self.send({"event": "start", "start": {
            "stream_sid": self.stream_sid, "call_sid": call_sid, "account_sid": account_sid, "from": frm, "to": to,
            "custom_parameters": custom or {}, "media_format": mf}})

    async def play(self, pcm: bytes, rate: int = 8000, pace: float = 0.01) -> None:
        """Caller audio in Exotel's ~100 ms media chunks, faster than real time but paced."""
        step = rate // 10 * 2
        for i, off in enumerate(range(0, len(pcm), step)):
            chunk = pcm[off:off + step]
            if self.codec == "ulaw":
                chunk = pcm16_to_ulaw(chunk)
            await self.send({"event": "media", "media": {"chunk": str(i + 1), "timestamp": str(i * 100),
                                                         "payload": base64.b64encode(chunk).decode()}})
            await asyncio.sleep(pace)

    async def dtmf(self, digit: str, duration: str = "120") -> None:
        await self.send({"event": "dtmf", "dtmf": {"digit": digit, "duration": duration}})

    async def stop(self, reason: str = "callended") -> None:
        await self.send({"event": "stop", "stop": {"call_sid": self.call_sid, "account_sid": self.account_sid,
                                                   "reason": reason}})

    async def _read(self) -> None:
        try:
            async for msg in self.conn:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                ev = m.get("event")
                if ev == "media":
                    assert m["stream_sid"] == self.stream_sid
                    self.rx.chunks.append(base64.b64decode(m["media"]["payload"]))
                    if self.on_media is not None:
                        self.on_media(self.rx.chunks[-1], asyncio.get_running_loop().time())
                elif ev == "mark":
                    name = m["mark"]["name"]
                    self.rx.marks.append((name, len(self.rx.audio)))
                    if self.echo_marks:
                        await self.send({"event": "mark", "mark": {"name": name}})
                elif ev == "clear":
                    self.rx.clears.append(len(self.rx.audio))
                    if self.on_clear is not None:
                        self.on_clear(asyncio.get_running_loop().time())
                else:
                    self.rx.other.append(m)
                await self._changed()
        finally:
            self.close_code = self.conn.close_code
            self.close_reason = str(getattr(self.conn, "_close_message", "") or "")
            self.closed.set()
            await self._changed()
