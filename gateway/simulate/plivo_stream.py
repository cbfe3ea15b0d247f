"""Plivo's side of a bidirectional Audio Stream and of its V3-signed webhooks, for the tests.

Messages (https://www.plivo.com/docs/voice/xml/the-stream-element/ and the Audio Streams guide): Plivo sends
`start` {sequenceNumber, start:{callId, streamId, accountId, tracks, mediaFormat:{encoding: audio/x-mulaw,
sampleRate: 8000}}}, `media` {streamId, media:{track, timestamp, chunk, payload}}, `dtmf` {dtmf:{digit}},
`playedStream` {streamId, name} once the audio before a `checkpoint` has played, `clearedAudio`; the application
sends `playAudio` {media:{contentType, sampleRate, payload}}, `checkpoint` {streamId, name}, `clearAudio`.
Webhooks are signed with the official SDK's V3 scheme (HMAC-SHA256 of URL + sorted params + "." + nonce).
"""
from __future__ import annotations

import base64
import json
import secrets
import uuid
from typing import Any

import aiohttp
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

from .twilio_stream import TwilioStreamClient


def sign_v3(token: str, url: str, params: dict[str, str], nonce: str) -> str:
    base = construct_post_url(url, dict(params)).decode()
    return str(get_signature_v3(token.encode(), base, nonce.encode()).decode())


async def post_signed(url: str, params: dict[str, str], token: str | None, *, signed_url: str | None = None,
                      tamper: bool = False) -> tuple[int, str]:
    headers = {}
    if token is not None:
        nonce = secrets.token_hex(10)
        headers = {"X-Plivo-Signature-V3": sign_v3(token, signed_url or url, params, nonce),
                   "X-Plivo-Signature-V3-Nonce": nonce}
    if tamper:
        params = {**params, "From": "15550009999"}
    async with aiohttp.ClientSession() as s, s.post(url, data=params, headers=headers) as r:
        return r.status, await r.text()


class PlivoStreamClient(TwilioStreamClient):
    """Plays Plivo's side: `playAudio` is played in real time, a `checkpoint` is answered with `playedStream` once
    the audio before it has played, `clearAudio` drops what is queued and answers `clearedAudio`."""

    async def send(self, obj: dict[str, Any]) -> None:
        self._seq += 1
        await self.conn.send(json.dumps({"sequenceNumber": self._seq, "streamId": self.stream_sid, **obj}))

    # (the override: Plivo's start names the call by its CallUUID, not Twilio's call_id / CallSid)
    async def start(self, call_uuid: str, *, media_format: dict[str, Any] | None = None,  # type: ignore[override]
                    **_: Any) -> None:
        self.stream_sid = str(uuid.uuid4())
        await self.send({"event": "start", "start": {
            "callId": call_uuid, "streamId": self.stream_sid, "accountId": "1", "tracks": ["inbound"],
            "mediaFormat": media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
            "extra_headers": "{}"})

    async def media(self, ulaw: bytes) -> None:
        self._chunk += 1
        await self.send({"event": "media", "media": {"track": "inbound", "timestamp": str(self._chunk * 20),
                                                     "chunk": self._chunk,
                                                     "payload": base64.b64encode(ulaw).decode()}})

    async def dtmf(self, digit: str) -> None:
        await self.send({"event": "dtmf", "dtmf": {"track": "inbound", "digit": digit}})

    def mark_message(self, name: str) -> dict[str, Any]:
        return {"event": "playedStream", "name": name}

    def translate(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Plivo's commands in the shapes the Twilio player understands."""
        ev = msg.get("event")
        if ev == "playAudio":
            return {"event": "media", "media": {"payload": msg["media"]["payload"]}}
        if ev == "checkpoint":
            return {"event": "mark", "mark": {"name": msg["name"]}}
        if ev == "clearAudio":
            return {"event": "clear"}
        return msg
