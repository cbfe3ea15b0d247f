#!/usr/bin/env python3
"""A speech-to-speech engine: bridges each gateway call to a Realtime-style websocket server at 24 kHz.

It speaks only the gateway's engine protocol (docs/engine-protocol.md) on one side and the OpenAI Realtime API's
websocket events on the other. The gateway is asked for 24 kHz PCM16 (`?sample_rate=24000`), which is the
Realtime API's `audio/pcm` format, so audio is passed through untouched, only base64-wrapped:

    gateway → engine  binary 20 ms PCM16 @ 24 kHz  →  {"type": "input_audio_buffer.append", "audio": <base64>}
    engine → gateway  binary PCM16 @ 24 kHz        ←  {"type": "response.output_audio.delta", "delta": <base64>}
                                                      (`response.audio.delta` in the beta API: both accepted)
    engine → gateway  {"type": "clear"}            ←  {"type": "input_audio_buffer.speech_started"}  (barge-in)
    gateway hangup / model socket closed           →  the other side is closed too

At the start the bridge sends `session.update` asking for 24 kHz PCM both ways and server-side VAD, so the model
detects turns and interrupts itself; the bridge only has to drop what the caller has not heard yet (`clear`).

Event names and fields follow the OpenAI API reference, "Realtime client events" / "Realtime server events"
(https://platform.openai.com/docs/api-reference/realtime-client-events and …/realtime-server-events): client
`session.update`, `input_audio_buffer.append` (`audio`: base64 bytes in the session's input format); server
`response.output_audio.delta` (`delta`: base64 audio), `input_audio_buffer.speech_started` ("the client may want
to use this event to interrupt audio playback"), `error`.

Connect mode (the gateway dials this bridge once per call):

    python examples/realtime_bridge.py --listen 127.0.0.1:9100 --realtime wss://api.openai.com/v1/realtime?model=…
    gateway serve --engine 'ws://127.0.0.1:9100/?sample_rate=24000'

Accept mode (the bridge dials the gateway and keeps N idle connections):

    gateway serve --engine 'accept:realtime?sample_rate=24000'
    python examples/realtime_bridge.py --connect 'ws://127.0.0.1:8080/engine/ws?pool=realtime' \\
        --api-key "$(cat ~/.telephony-gateway/api_key)" --realtime wss://…

In accept mode the connection loop is examples/engine_client.py's (kept next to this file): reconnect after every
call, back off when the gateway is unreachable, and in a cluster follow a `{"type": "redirect", "url": …}` sent
instead of `start` (another gateway process has a call waiting: serve that one call there, then come back).

The model's key is read from REALTIME_API_KEY (sent as `Authorization: Bearer …`), never from the command line.
Needs only `websockets` (≥ 13).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

if str(Path(__file__).resolve().parent) not in sys.path:    # engine_client.py beside this file (also when imported)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_client  # noqa: E402  (the accept-mode loop and `redirect` parsing, shared with the echo engine)

log = logging.getLogger("realtime-bridge")

RATE = 24000   # the Realtime API's PCM16 rate, and the rate asked of the gateway
#: server events carrying model audio: GA name first, then the beta API's
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")


def session_update() -> dict:
    """24 kHz PCM in and out, server VAD (the model takes turns and stops itself when the caller barges in)."""
    pcm = {"type": "audio/pcm", "rate": RATE}
    return {"type": "session.update", "session": {
        "type": "realtime",
        "audio": {"input": {"format": pcm, "turn_detection": {"type": "server_vad"}}, "output": {"format": pcm}}}}


async def bridge(gateway, realtime_url: str, api_key: str | None = None) -> str | None:
    """One call: read the gateway's `start`, open the model's websocket and pump both ways until either ends.
    Returns the URL of a `redirect` the gateway sent instead of `start` (accept mode in a cluster)."""
    first = await gateway.recv()
    if (target := engine_client.redirect_target(first)) is not None:
        log.info("redirected to %s", target.split("?", 1)[0])
        return target
    start = json.loads(first)
    if start.get("type") != "start":
        await gateway.close(1008, "expected start")
        return None
    if start["audio"]["sample_rate"] != RATE:
        # the engine spec must ask for it: ws://…/?sample_rate=24000 or accept:<pool>?sample_rate=24000
        await gateway.send(json.dumps({"type": "hangup", "reason": "engine_needs_24khz"}))
        return None
    log.info("call %s %s -> %s", start["call_id"], start["from"], start["to"])
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with connect(realtime_url, additional_headers=headers, max_size=None) as model:
        await model.send(json.dumps(session_update()))
        up = asyncio.create_task(_caller_to_model(gateway, model))
        down = asyncio.create_task(_model_to_caller(model, gateway))
        done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if down in done:
            # the model went away first: end the call rather than leave the caller in silence
            try:
                await gateway.send(json.dumps({"type": "hangup", "reason": "realtime_closed"}))
            except ConnectionClosed:
                pass
    return None


async def _caller_to_model(gateway, model) -> None:
    """Caller audio → `input_audio_buffer.append`; returns when the gateway says `hangup` or closes."""
    try:
        async for data in gateway:
            if isinstance(data, bytes):
                await model.send(json.dumps({"type": "input_audio_buffer.append",
                                             "audio": base64.b64encode(data).decode("ascii")}))
            elif json.loads(data).get("type") == "hangup":
                return
    except ConnectionClosed:
        return


async def _model_to_caller(model, gateway) -> None:
    """Model audio deltas → binary frames for the caller; speech_started → `clear`; returns when the model closes."""
    try:
        async for data in model:
            event = json.loads(data)
            kind = event.get("type")
            if kind in AUDIO_DELTAS:
                await gateway.send(base64.b64decode(event["delta"]))
            elif kind == "input_audio_buffer.speech_started":
                await gateway.send(json.dumps({"type": "clear"}))   # barge-in: drop what the caller has not heard
            elif kind == "error":
                log.warning("realtime error: %s", event.get("error"))
    except ConnectionClosed:
        return


async def listen(host: str, port: int, realtime_url: str, api_key: str | None = None):
    """Connect mode: serve the gateway's per-call websockets; returns the started server."""
    return await serve(lambda ws: bridge(ws, realtime_url, api_key), host, port, max_size=None)


async def accept_worker(gateway_url: str, gateway_key: str, realtime_url: str, api_key: str | None = None,
                        worker: int = 1) -> None:
    """Accept mode, one slot: connect to the gateway, wait to be handed a call (or redirected to one), bridge it,
    connect again (examples/engine_client.py's loop)."""
    await engine_client.accept_worker(gateway_url, gateway_key, worker,
                                      lambda gateway: bridge(gateway, realtime_url, api_key))


async def _main(args: argparse.Namespace) -> None:
    api_key = os.environ.get("REALTIME_API_KEY")
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        server = await listen(host, int(port), args.realtime, api_key)
        log.info("listening on %s", args.listen)
        await server.serve_forever()
    else:
        await asyncio.gather(*(accept_worker(args.connect, args.api_key, args.realtime, api_key, i)
                               for i in range(1, args.concurrency + 1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--listen", metavar="HOST:PORT", help="connect mode: the gateway dials us")
    mode.add_argument("--connect", metavar="URL", help="accept mode: the gateway's /engine/ws URL")
    p.add_argument("--api-key", help="the gateway's API key (accept mode)")
    p.add_argument("--concurrency", type=int, default=1, help="calls taken at once (accept mode)")
    p.add_argument("--realtime", required=True, help="the Realtime-style websocket URL (wss://…)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(_main(p.parse_args()))
    except engine_client.Refused as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
