"""Test doubles for Vonage: the Voice API's media websocket client (the REST stand-in is tests/fakes/vonage_rest.py).

The websocket side follows Vonage's protocol: the first text message is `websocket:connected` with the NCCO's
content-type and headers, then binary 16-bit PCM frames of 20 ms; `notify` is answered with `websocket:notify`
(payload echoed) and `clear` with `websocket:cleared`.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fakes.vonage_rest import API_KEY, API_SECRET, APP_ID, VONAGE_NUMBER, FakeVonageApi  # noqa: F401

#: the account's signature secret: numbers in tests are imported with it, as the gateway requires by default
SIGNATURE_SECRET = "vonage-signature-secret-0123456789"


def signed_headers(secret: str = SIGNATURE_SECRET) -> dict[str, str]:
    """What Vonage sends with a signed webhook: `Authorization: Bearer <JWT>`, HS256 with the signature secret."""
    token = jwt.encode({"iat": int(time.time()), "jti": str(uuidlib.uuid4()), "api_key": API_KEY}, secret, "HS256")
    return {"Authorization": f"Bearer {token}"}


def rsa_private_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@dataclass
class VRx:
    frames: list[bytes] = field(default_factory=list)
    notifies: list[tuple[str, int]] = field(default_factory=list)   # (name, audio bytes before it)
    clears: list[int] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        return b"".join(self.frames)


class FakeVonageSocket:
    """Vonage's side of the media websocket the NCCO asked for."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: dict[str, Any], *, gw_url: str) -> None:
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
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    m = json.loads(msg.data)
                    if m.get("action") == "notify":
                        self.rx.notifies.append((m["payload"]["name"], len(self.rx.audio)))
                        await self.ws.send_str(json.dumps({"event": "websocket:notify", "payload": m["payload"]}))
                    elif m.get("action") == "clear":
                        self.rx.clears.append(len(self.rx.audio))
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


async def add_vonage_number(gw, *, agent_id: int | None = None, private_pem: str | None = None,
                            signature_secret: str | None = SIGNATURE_SECRET, rate: int = 16000,
                            allow_unsigned: bool = False) -> dict[str, Any]:
    """A Vonage number as an import stores it: signed webhooks (SIGNATURE_SECRET) unless `signature_secret=None`;
    `allow_unsigned` is the explicit opt-out."""
    secrets = {}
    if private_pem:
        secrets["vonage_private_key"] = private_pem
    if signature_secret:
        secrets["vonage_signature_secret"] = signature_secret
    config = {"vonage_application_id": APP_ID if private_pem else None, "vonage_audio_rate": rate}
    if allow_unsigned:
        config["vonage_allow_unsigned_webhooks"] = True
    return await gw.store.create_number(
        {"phone_number": VONAGE_NUMBER, "provider": "vonage", "agent_id": agent_id, "name": "v", "config": config},
        secrets)
