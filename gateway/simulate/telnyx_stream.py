"""Telnyx's side of a bidirectional media stream and of its signed Call Control webhooks, for the tests.

The stream messages are Twilio's with Telnyx's names (https://developers.telnyx.com/api-reference/websockets/
stream-call-media-over-websocket): `connected` {version}, `start` {stream_id, start:{call_control_id,
media_format:{encoding: PCMU, sample_rate: 8000, channels: 1}}}, `media` {stream_id, media:{track, chunk,
timestamp, payload}}, `dtmf` {dtmf:{digit}}, `mark` {mark:{name}}, `stop`. Webhooks are signed with Ed25519 over
"{timestamp}|{body}" (headers telnyx-signature-ed25519, telnyx-timestamp).
"""
from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .twilio_stream import TwilioStreamClient


def public_key_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def webhook_body(event_type: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"data": {"event_type": event_type, "id": str(uuid.uuid4()), "record_type": "event",
                                "occurred_at": "2026-01-01T00:00:00Z", "payload": payload},
                       "meta": {"attempt": 1, "delivered_to": "http://gw/telnyx/webhook"}}).encode()


async def post_webhook(url: str, event_type: str, payload: dict[str, Any], key: Ed25519PrivateKey | None, *,
                       timestamp: int | None = None, tamper: bool = False) -> tuple[int, Any]:
    body = webhook_body(event_type, payload)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        ts = str(timestamp if timestamp is not None else int(time.time()))
        headers["telnyx-timestamp"] = ts
        headers["telnyx-signature-ed25519"] = base64.b64encode(key.sign(ts.encode() + b"|" + body)).decode()
    if tamper:
        body = body.replace(b'"from"', b'"from_"')
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


class TelnyxStreamClient(TwilioStreamClient):
    async def connected(self) -> None:
        await self.send({"event": "connected", "version": "1.0.0"})

    async def send(self, obj: dict[str, Any]) -> None:
        self._seq += 1
        if obj.get("event") != "connected":
            obj = {"sequence_number": str(self._seq), "stream_id": self.stream_sid, **obj}
        await self.conn.send(json.dumps(obj))

    # (the override: Telnyx's start names the call by its call_control_id, not Twilio's call_id / CallSid)
    async def start(self, call_control_id: str, *, media_format: dict[str, Any] | None = None,  # type: ignore[override]
                    **_: Any) -> None:
        await self.connected()
        await self.send({"event": "start", "start": {
            "user_id": str(uuid.uuid4()), "call_control_id": call_control_id, "client_state": "",
            "media_format": media_format or {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}})

    async def media(self, ulaw: bytes) -> None:
        self._chunk += 1
        await self.send({"event": "media", "media": {"track": "inbound", "chunk": str(self._chunk),
                                                     "timestamp": str(self._chunk * 20),
                                                     "payload": base64.b64encode(ulaw).decode()}})

    async def dtmf(self, digit: str) -> None:
        await self.send({"event": "dtmf", "dtmf": {"digit": digit}})

    async def stop(self, call_control_id: str = "", **_: Any) -> None:   # type: ignore[override]  # Telnyx names the call its own way
        await self.send({"event": "stop", "stop": {"call_control_id": call_control_id}})

    def mark_message(self, name: str) -> dict[str, Any]:
        return {"event": "mark", "mark": {"name": name}}
