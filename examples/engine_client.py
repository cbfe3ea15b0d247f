#!/usr/bin/env python3
"""A runnable echo voice engine speaking the gateway's websocket engine protocol (docs/engine-protocol.md).

Connect mode — the gateway dials this engine for every call:

    python examples/engine_client.py --listen 127.0.0.1:9000
    gateway serve --engine ws://127.0.0.1:9000            # or ws://127.0.0.1:9000/?sample_rate=8000

Accept mode — this engine dials the gateway and keeps N idle connections, one per call it can take:

    gateway serve --engine accept
    python examples/engine_client.py --connect ws://127.0.0.1:8080/engine/ws \
        --api-key "$(cat ~/.telephony-gateway/api_key)" --concurrency 4

In a cluster (several gateway processes) an idle connection may be sent `{"type": "redirect", "url": …}` instead
of `start`: another process has a call for it. The engine then connects once to that URL (same API key, the pool
is in the URL), serves the call there, and afterwards offers itself at --connect again.

Either way it echoes the caller's audio back, hangs up on DTMF `#`, transfers on `0`, and puts a mark after a
short beep at the start so you can see mark round-trips in its log. Needs only `websockets` (≥ 13).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import struct
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

log = logging.getLogger("echo-engine")


class Refused(Exception):
    """The gateway rejected this engine (wrong API key, bad pool name): retrying would not help."""


def beep(sample_rate: int, ms: int = 200, hz: float = 660.0) -> bytes:
    n = sample_rate * ms // 1000
    return struct.pack(f"<{n}h", *(int(6000 * math.sin(2 * math.pi * hz * i / sample_rate)) for i in range(n)))


def redirect_target(message: str | bytes) -> str | None:
    """The URL of a gateway `redirect` message ({"type": "redirect", "url": "ws[s]://…"}), else None."""
    if not isinstance(message, str):
        return None
    try:
        msg = json.loads(message)
    except ValueError:
        return None
    if not isinstance(msg, dict) or msg.get("type") != "redirect":
        return None
    url = msg.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss") or not urlsplit(url).hostname:
        return None
    return url


async def converse(ws) -> str | None:
    """One call over one websocket: read `start`, then echo audio and react to events until `hangup`.
    Returns the URL to reconnect to when the gateway redirected this idle connection instead."""
    first = await ws.recv()
    if (target := redirect_target(first)) is not None:
        log.info("redirected to %s", target.split("?", 1)[0])
        return target
    start = json.loads(first)
    if start.get("type") != "start":
        await ws.close(1008, "expected start")
        return None
    rate = start["audio"]["sample_rate"]
    log.info("call %s %s %s -> %s at %d Hz", start["call_id"], start["direction"], start["from"], start["to"], rate)
    await ws.send(beep(rate))
    await ws.send(json.dumps({"type": "mark", "name": "beep"}))
    async for data in ws:
        if isinstance(data, bytes):
            await ws.send(data)  # echo: 20 ms of caller audio back to the caller
            continue
        msg = json.loads(data)
        kind = msg["type"]
        if kind == "dtmf":
            log.info("dtmf %s", msg["digit"])
            if msg["digit"] == "#":
                await ws.send(json.dumps({"type": "hangup", "reason": "caller_requested"}))
            elif msg["digit"] == "0":
                await ws.send(json.dumps({"type": "clear"}))
                await ws.send(json.dumps({"type": "transfer"}))  # the agent's configured number
        elif kind == "hangup":
            log.info("call ended by %s: %s", msg["source"], msg["reason"])
            return None
        else:  # mark, speech, amd, transfer_result
            log.info("%s", msg)
    return None


async def listen(host: str, port: int):
    """Connect mode: a websocket server the gateway dials; returns the running server."""
    async def handler(ws):
        try:
            await converse(ws)
        except websockets.ConnectionClosed:
            pass

    server = await serve(handler, host, port, compression=None, max_size=4 * 1024 * 1024)
    log.info("echo engine listening on ws://%s:%d", host, server.sockets[0].getsockname()[1])
    return server


async def accept_worker(url: str, api_key: str, worker: int,
                        serve_call: Callable[[Any], Awaitable[str | None]] = converse) -> None:
    """Accept mode: keep one idle connection open at the gateway; after each call, connect again. A redirect
    is followed at once, for that one connection; a redirect target that fails sends us back to `url`.

    `serve_call(ws)` serves one connection (this echo engine's `converse` by default; another engine passes its
    own, e.g. examples/realtime_bridge.py) and returns the URL of a `redirect` it was sent instead of `start`."""
    delay = 0.5
    target = url
    while True:
        try:
            async with connect(target, additional_headers={"Authorization": f"Bearer {api_key}"},
                               compression=None, max_size=4 * 1024 * 1024) as ws:
                delay = 0.5
                log.debug("worker %d waiting for a call", worker)
                target = await serve_call(ws) or url
            continue  # the call is over (or we were redirected): offer ourselves again at once
        except websockets.InvalidStatus as e:
            if e.response.status_code in (400, 401):
                raise Refused(f"gateway refused the engine: {e.response.status_code} {e.response.body!r}") from e
            log.warning("worker %d: %s; retrying in %.1fs", worker, e, delay)
        except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake) as e:
            log.warning("worker %d: %s; retrying in %.1fs", worker, e, delay)
        target = url
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:9000", metavar="HOST:PORT", help="connect mode (default)")
    p.add_argument("--connect", metavar="URL", help="accept mode: the gateway's ws://…/engine/ws URL")
    p.add_argument("--api-key", help="the gateway's API key (accept mode)")
    p.add_argument("--pool", default="default", help="engine pool (agent engine spec accept:<pool>)")
    p.add_argument("--concurrency", type=int, default=4, help="calls served at once (accept mode)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    if args.connect:
        if not args.api_key:
            p.error("--connect needs --api-key")
        sep = "&" if "?" in args.connect else "?"
        url = f"{args.connect}{sep}pool={args.pool}"
        await asyncio.gather(*(accept_worker(url, args.api_key, i) for i in range(args.concurrency)))
    else:
        host, _, port = args.listen.rpartition(":")
        server = await listen(host or "127.0.0.1", int(port))
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Refused as e:
        raise SystemExit(str(e)) from None
    except KeyboardInterrupt:
        pass
