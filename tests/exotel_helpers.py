"""Test doubles for Exotel: a Voicebot websocket client speaking Exotel's protocol and a loopback REST API fake.

Both follow Exotel's published formats (see carriers/exotel.py for the sources): the client sends `connected`,
`start` (snake_case, numbers as strings), 100 ms `media` chunks, `dtmf`, `stop`, and echoes each `mark` we send
once the audio queued before it would have played; the REST fake answers IncomingPhoneNumbers and
Calls/connect.json like Exotel, with Basic auth and RestException errors (tests/fakes/exotel_rest.py).
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from voicecodecs import pcm16_to_ulaw

from fakes.exotel_rest import ACCOUNT_SID, API_KEY, API_TOKEN, APP_ID, FakeExotelApi, basic  # noqa: F401

EXOPHONE = "+918047491899"


def call_coming_token() -> str:
    """The gw_token the connection test shows for the call_coming URL of this account."""
    from carriers.exotel import passthru_token

    return passthru_token({"config": {"exotel_account_sid": ACCOUNT_SID}, "secrets": {"exotel_api_token": API_TOKEN}})


def tone(seconds: float, rate: int = 8000, freq: float = 440.0, amp: int = 8000) -> bytes:
    n = int(seconds * rate)
    return b"".join(int(amp * math.sin(2 * math.pi * freq * i / rate)).to_bytes(2, "little", signed=True)
                    for i in range(n))


async def add_exophone(gw, *, agent_id: int | None = None, allow_unauthenticated: bool = False,
                       phone: str = EXOPHONE) -> dict[str, Any]:
    """An ExoPhone as an import stores it: authentication required unless the explicit opt-out is given."""
    return await gw.store.create_number(
        {"phone_number": phone, "provider": "exotel", "agent_id": agent_id, "name": "test",
         "config": {"exotel_subdomain": "api.in.exotel.com", "exotel_account_sid": ACCOUNT_SID,
                    "exotel_app_id": APP_ID, "exotel_allow_unauthenticated": allow_unauthenticated,
                    "exotel_exophone": "0" + phone[3:]}},
        {"exotel_api_key": API_KEY, "exotel_api_token": API_TOKEN})


class CallWatch:
    """Awaitable call lifecycle events from the CallManager (no polling, every wait bounded)."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.started: asyncio.Queue = asyncio.Queue()
        self.ended: dict[str, asyncio.Event] = {}
        gw.calls.subscribe(self._on)

    def _on(self, kind: str, call) -> None:
        if kind == "call_started":
            self.started.put_nowait(call)
        if kind == "call_ended":
            self.ended.setdefault(call.id, asyncio.Event()).set()

    async def next_call(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.started.get(), timeout)

    async def wait_ended(self, call, timeout: float = 5.0) -> dict[str, Any]:
        await asyncio.wait_for(self.ended.setdefault(call.id, asyncio.Event()).wait(), timeout)
        return await self.gw.store.get_call(call.log_id)


@dataclass
class Received:
    chunks: list[bytes] = field(default_factory=list)
    marks: list[tuple[str, int]] = field(default_factory=list)      # (name, audio bytes received before it)
    clears: list[int] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        return b"".join(self.chunks)


class FakeExotel:
    """Exotel's side of one Voicebot websocket. By default it authenticates as Exotel does for a flow whose URL is
    wss://API_KEY:API_TOKEN@host/…; `headers={}` connects anonymously."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, echo_marks: bool = True,
                 headers: dict[str, str] | None = None) -> None:
        self.session = session
        self.url = url
        self.headers = {"Authorization": basic(API_KEY, API_TOKEN)} if headers is None else headers
        self.echo_marks = echo_marks
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.rx = Received()
        self.stream_sid = "MZ" + "a1" * 8
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.new_chunk = asyncio.Condition()
        self._reader: asyncio.Task | None = None
        self._seq = 0
        self.codec = "pcm16"

    async def connect(self) -> "FakeExotel":
        self.ws = await self.session.ws_connect(self.url, headers=self.headers, autoclose=True)
        self._reader = asyncio.create_task(self._read())
        await self.send({"event": "connected"})
        return self

    async def send(self, obj: dict[str, Any]) -> None:
        self._seq += 1
        if obj.get("event") != "connected":
            obj = {"sequence_number": str(self._seq), "stream_sid": self.stream_sid, **obj}
        await self.ws.send_str(json.dumps(obj))

    async def start(self, call_sid: str = "CA0001", *, frm: str = "09876543210", to: str = "08047491899",
                    account_sid: str = ACCOUNT_SID, encoding: str | None = "audio/x-raw",
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
        await self.send({"event": "stop", "stop": {"call_sid": "CA0001", "account_sid": ACCOUNT_SID,
                                                   "reason": reason}})

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                ev = m.get("event")
                if ev == "media":
                    assert m["stream_sid"] == self.stream_sid
                    self.rx.chunks.append(base64.b64decode(m["media"]["payload"]))
                elif ev == "mark":
                    name = m["mark"]["name"]
                    self.rx.marks.append((name, len(self.rx.audio)))
                    if self.echo_marks:
                        await self.send({"event": "mark", "mark": {"name": name}})
                elif ev == "clear":
                    self.rx.clears.append(len(self.rx.audio))
                else:
                    self.rx.other.append(m)
                async with self.new_chunk:
                    self.new_chunk.notify_all()
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = str(getattr(self.ws, "_close_message", "") or "")
            self.closed.set()
            async with self.new_chunk:
                self.new_chunk.notify_all()

    async def wait_for(self, predicate, timeout: float = 5.0) -> None:
        async def _wait():
            async with self.new_chunk:
                await self.new_chunk.wait_for(lambda: predicate(self.rx) or self.closed.is_set())
        await asyncio.wait_for(_wait(), timeout)
        assert predicate(self.rx), "stream closed before the expected messages arrived"

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=2)


def ws_url(gw, path: str = "/exotel/media") -> str:
    return gw.url(path).replace("http://", "ws://")
