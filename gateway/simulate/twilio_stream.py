"""Plays Twilio's side of a bidirectional Media Stream against /twilio/media, plus webhook signing: used by
`gateway simulate --via twilio` and by the tests (tests/fakes/twilio_env.py).

Like Twilio, it plays what it receives in real time: each 20 ms `media` payload advances a playout clock, a `mark`
is echoed once the audio sent before it has played, and `clear` drops the unplayed audio and echoes the pending
marks at once (https://www.twilio.com/docs/voice/media-streams/websocket-messages).
"""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect


def sign(token: str, url: str, params: dict[str, Any] | None = None) -> str:
    return str(RequestValidator(token).compute_signature(url, params or {}))


async def post_signed(url: str, params: dict[str, str], token: str | None, *, signed_url: str | None = None,
                      tamper: bool = False, header: str = "X-Twilio-Signature") -> tuple[int, str]:
    """POST a form as Twilio does; `signed_url` is the public URL Twilio would have signed (behind a proxy);
    `header`: where the signature goes (SignalWire: X-SignalWire-Signature)."""
    headers = {}
    if token is not None:
        sig = sign(token, signed_url or url, params)
        headers[header] = sig
    if tamper:
        params = {**params, "From": "+15550009999"}
    async with aiohttp.ClientSession() as s, s.post(url, data=params, headers=headers) as r:
        return r.status, await r.text()


@dataclass
class Received:
    media: list[tuple[float, bytes]] = field(default_factory=list)   # (arrival time, μ-law payload)
    marks: list[str] = field(default_factory=list)
    clears: int = 0
    stream_sids: set[str] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)


class TwilioStreamClient:
    """`on_media(ulaw, arrival)` and `on_clear(arrival)`, when set, see each played payload and clear as it comes."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None,
                 on_media: Callable[[bytes, float], None] | None = None,
                 on_clear: Callable[[float], None] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.on_media = on_media
        self.on_clear = on_clear
        self.ws: ClientConnection | None = None
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.got = Received()
        self.echoed: list[str] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._playout_end = 0.0
        self._pending: list[tuple[float, str]] = []
        self._seq = 0
        self._chunk = 0
        self._reader: asyncio.Task[None] | None = None
        self._echoer: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.new_item = asyncio.Event()

    @property
    def conn(self) -> ClientConnection:
        """The open websocket (inside `async with`)."""
        if self.ws is None:
            raise RuntimeError("not connected: use `async with` first")
        return self.ws

    async def __aenter__(self) -> TwilioStreamClient:
        self.ws = await connect(self.url, additional_headers=self.headers, max_size=2 ** 20)
        self._reader = asyncio.create_task(self._read())
        self._echoer = asyncio.create_task(self._echo_marks())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for t in (self._reader, self._echoer):
            if t is not None:
                t.cancel()
        await self.conn.close()

    # -- Twilio → gateway ---------------------------------------------------------------------------------------
    async def send(self, obj: dict[str, Any]) -> None:
        self._seq += 1
        if obj.get("event") != "connected":
            obj = {"sequenceNumber": str(self._seq), **obj}
        await self.conn.send(json.dumps(obj))

    async def connected(self) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    async def start(self, call_id: str, *, call_sid: str = "", account_sid: str = "", agent_id: str = "",
                    media_format: dict[str, Any] | None = None) -> None:
        await self.connected()
        await self.send({"event": "start", "streamSid": self.stream_sid, "start": {
            "streamSid": self.stream_sid, "accountSid": account_sid, "callSid": call_sid,
            "tracks": ["inbound"], "customParameters": {"call_id": call_id, "agent_id": agent_id},
            "mediaFormat": media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})

    async def media(self, ulaw: bytes) -> None:
        self._chunk += 1
        await self.send({"event": "media", "streamSid": self.stream_sid, "media": {
            "track": "inbound", "chunk": str(self._chunk), "timestamp": str(self._chunk * 20),
            "payload": base64.b64encode(ulaw).decode()}})

    async def play(self, ulaw: bytes, *, realtime: bool = True, chunk: int = 160) -> None:
        """Send a recording in 20 ms chunks (160 bytes of μ-law 8 kHz; `chunk` for other formats), paced at 20 ms
        like a live call."""
        t0 = time.monotonic()
        for n, i in enumerate(range(0, len(ulaw) - chunk + 1, chunk)):
            await self.media(ulaw[i:i + chunk])
            if realtime:
                delay = t0 + (n + 1) * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def dtmf(self, digit: str) -> None:
        await self.send({"event": "dtmf", "streamSid": self.stream_sid,
                         "dtmf": {"track": "inbound_track", "digit": digit}})

    async def stop(self, call_sid: str = "", account_sid: str = "") -> None:
        await self.send({"event": "stop", "streamSid": self.stream_sid,
                         "stop": {"accountSid": account_sid, "callSid": call_sid}})

    # -- gateway → Twilio ---------------------------------------------------------------------------------------
    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                self.got.events.append(json.loads(raw))
                msg = self.translate(self.got.events[-1])
                if "streamSid" in msg:
                    self.got.stream_sids.add(msg["streamSid"])
                now = time.monotonic()
                ev = msg.get("event")
                if ev == "media":
                    payload = base64.b64decode(msg["media"]["payload"])
                    self.got.media.append((now, payload))
                    self._playout_end = max(self._playout_end, now) + len(payload) / 8000
                    if self.on_media is not None:
                        self.on_media(payload, now)
                elif ev == "mark":
                    self.got.marks.append(msg["mark"]["name"])
                    self._pending.append((max(self._playout_end, now), msg["mark"]["name"]))
                elif ev == "clear":
                    self.got.clears += 1
                    self._playout_end = now
                    if self.on_clear is not None:
                        self.on_clear(now)
                    self._pending = [(now, name) for _, name in self._pending]
                self.new_item.set()
        except Exception:
            pass
        finally:
            self.close_code = self.conn.close_code
            self.close_reason = self.conn.close_reason or ""
            self.closed.set()
            self.new_item.set()

    async def _echo_marks(self) -> None:
        while True:
            now = time.monotonic()
            due = [p for p in self._pending if p[0] <= now]
            for p in due:
                self._pending.remove(p)
                self.echoed.append(p[1])
                try:
                    await self.send(self.mark_message(p[1]))
                except Exception:
                    return
            await asyncio.sleep(0.005)

    def translate(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A message of the carrier's as Twilio's (`media`, `mark`, `clear`): the identity here."""
        return msg

    def mark_message(self, name: str) -> dict[str, Any]:
        """The echo of a mark whose audio has played (the carrier's wire format)."""
        return {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> None:
        """Wait until predicate() is true (re-checked on every message received)."""
        async def loop() -> None:
            while not predicate():
                self.new_item.clear()
                if self.closed.is_set() and not predicate():
                    raise AssertionError("stream closed before the condition held")
                await self.new_item.wait()
        await asyncio.wait_for(loop(), timeout)
