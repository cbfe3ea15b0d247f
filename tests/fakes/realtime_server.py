"""A local stand-in for a Realtime-style speech-to-speech websocket server (OpenAI Realtime API events).

It keeps the client's `session.update`, decodes every `input_audio_buffer.append` (base64 PCM16), answers each
with a `response.output_audio.delta` carrying the same audio (an "echo model"), and after `barge_after` appends
emits `input_audio_buffer.speech_started` once, as server VAD does when the caller starts talking.

    async with RealtimeStandIn(barge_after=10) as model:
        ... model.url ...; model.appended; model.session; await model.closed.wait()
"""
from __future__ import annotations

import asyncio
import base64
import json

from websockets.asyncio.server import serve


class RealtimeStandIn:
    def __init__(self, barge_after: int = 10) -> None:
        self.barge_after = barge_after
        self.session: dict | None = None
        self.appended: list[bytes] = []
        self.closed = asyncio.Event()
        self._server = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1/realtime"

    async def __aenter__(self) -> RealtimeStandIn:
        self._server = await serve(self._connection, "127.0.0.1", 0, max_size=None)
        return self

    def drop(self) -> None:
        """The model service goes away: every connection is closed (1001)."""
        self._server.close()

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _connection(self, ws) -> None:
        await ws.send(json.dumps({"type": "session.created", "event_id": "evt_0", "session": {}}))
        try:
            async for data in ws:
                event = json.loads(data)
                if event["type"] == "session.update":
                    self.session = event["session"]
                    await ws.send(json.dumps({"type": "session.updated", "session": event["session"]}))
                elif event["type"] == "input_audio_buffer.append":
                    pcm = base64.b64decode(event["audio"])
                    self.appended.append(pcm)
                    await ws.send(json.dumps({"type": "response.output_audio.delta", "response_id": "resp_1",
                                              "item_id": "item_1", "output_index": 0, "content_index": 0,
                                              "delta": event["audio"]}))
                    if len(self.appended) == self.barge_after:
                        await ws.send(json.dumps({"type": "input_audio_buffer.speech_started", "event_id": "evt_1",
                                                  "audio_start_ms": 0, "item_id": "item_2"}))
        finally:
            self.closed.set()
