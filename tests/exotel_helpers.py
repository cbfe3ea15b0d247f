"""Test doubles for Exotel: the Voicebot websocket client (gateway/simulate/exotel_stream.py, shared with
`gateway simulate`) and a loopback REST API fake.

Both follow Exotel's published formats (see carriers/exotel.py for the sources): the client sends `connected`,
`start` (snake_case, numbers as strings), 100 ms `media` chunks, `dtmf`, `stop`, and echoes each `mark` we send
once the audio queued before it would have played; the REST fake answers IncomingPhoneNumbers and
Calls/connect.json like Exotel, with Basic auth and RestException errors (tests/fakes/exotel_rest.py).
"""
from __future__ import annotations

import asyncio
import math
from typing import Any

from fakes.exotel_rest import ACCOUNT_SID, API_KEY, API_TOKEN, APP_ID, FakeExotelApi  # noqa: F401
from fakes.rest_faults import basic  # noqa: F401  (the tests' Basic auth header)
from gateway.engine.base import EngineSession, VoiceEngine
from gateway.frames import CallStarted, Hangup
from gateway.simulate.exotel_stream import ExotelStreamClient, Received  # noqa: F401

EXOPHONE = "+918047491899"


def tone(seconds: float, rate: int = 8000, freq: float = 440.0, amp: int = 8000) -> bytes:
    n = int(seconds * rate)
    return b"".join(int(amp * math.sin(2 * math.pi * freq * i / rate)).to_bytes(2, "little", signed=True)
                    for i in range(n))


def call_coming_token() -> str:
    """The gw_token the connection test shows for the call_coming URL of this account."""
    from carriers.exotel import passthru_token

    return passthru_token({"config": {"exotel_account_sid": ACCOUNT_SID}, "secrets": {"exotel_api_token": API_TOKEN}})


async def add_exophone(gw, *, agent_id: int | None = None, allow_unauthenticated: bool = False,
                       phone: str = EXOPHONE) -> dict[str, Any]:
    """An ExoPhone as an import stores it: authentication required unless the explicit opt-out is given."""
    return await gw.store.create_number(
        {"phone_number": phone, "provider": "exotel", "agent_id": agent_id, "name": "test",
         "config": {"exotel_subdomain": "api.in.exotel.com", "exotel_account_sid": ACCOUNT_SID,
                    "exotel_app_id": APP_ID, "exotel_allow_unauthenticated": allow_unauthenticated,
                    "exotel_exophone": "0" + phone[3:]}},
        {"exotel_api_key": API_KEY, "exotel_api_token": API_TOKEN})


class Monologue(VoiceEngine):
    """Produces 2 s of speech at once, as a TTS engine does (the media-stream carriers must pace it to playback)."""

    sample_rate = 16000

    async def handle_call(self, session: EngineSession) -> None:
        while (item := await session.receive()) is not None:
            if isinstance(item, CallStarted):
                await session.play(tone(2.0, 16000), end_of_utterance=True)
            elif isinstance(item, Hangup):
                return


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

    # The bounds only matter when something is wrong: a call took > 5 s to start on a box running four test suites
    # at once (load 12 on 2 cores, test_exotel_opt_out_accepts_anonymous_stream, 2026-11-30).
    async def next_call(self, timeout: float = 20.0):
        return await asyncio.wait_for(self.started.get(), timeout)

    async def wait_ended(self, call, timeout: float = 20.0) -> dict[str, Any]:
        await asyncio.wait_for(self.ended.setdefault(call.id, asyncio.Event()).wait(), timeout)
        return await self.gw.store.get_call(call.log_id)


class FakeExotel(ExotelStreamClient):
    """The stream client with this test account as the default `start` account. By default it authenticates as
    Exotel does for a flow whose URL is wss://API_KEY:API_TOKEN@host/…; `headers={}` connects anonymously."""

    def __init__(self, session: Any, url: str, *, headers: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(session, url, headers={"Authorization": basic(API_KEY, API_TOKEN)} if headers is None
                         else headers, **kw)

    async def start(self, call_sid: str = "CA0001", *, account_sid: str = ACCOUNT_SID, **kw: Any) -> None:
        await super().start(call_sid, account_sid=account_sid, **kw)


def ws_url(gw, path: str = "/exotel/media") -> str:
    return gw.url(path).replace("http://", "ws://")
