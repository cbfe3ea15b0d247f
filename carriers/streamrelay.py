"""A media socket carried to the process of the cluster that owns its call (docs/deploy.md, "Ownership of a call").

Adoption moves a call to the process its media stream reached. One stream cannot move its call: an attended
transfer's consultation call (carriers/twilio_consult.py; carriers/socket_consult.py for Exotel, Vonage, Plivo
and Telnyx) whose target's stream reaches another worker than the one holding the call. That process's engine is
mid-conversation with the caller's agent (it asked for the consultation and must now talk to the target), so the
stream goes to the call instead: the receiving process opens a websocket of its own to the owner's private URL
(`Gateway.direct_url`, from the `nodes` table), replays what it has read (the `start` message, Vonage's first
message) and then copies every message both ways until either side closes, whose close code the other side gets.
The owner checks the stream as if the carrier had connected to it directly (the signature / Basic auth headers
travel with it, tokens are in the URL or the replayed message; the URL path is the same and workers of one node
share their public URL).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from gateway.callmanager import CallManager
from gateway.config import ws_base

log = logging.getLogger("carriers.relay")

#: largest message relayed (a carrier's media frames are a few hundred bytes)
MAX_MESSAGE = 1 << 20


class RelayStream(Exception):
    """Raised while claiming a stream whose call another live process holds: carry the socket to `url` (the
    owner's media websocket URL) instead of serving it here."""

    def __init__(self, url: str, owner: str, headers: dict[str, str], calls: CallManager) -> None:
        super().__init__(f"relay to {owner}")
        self.url = url
        self.owner = owner
        #: upgrade headers the owner needs to check the stream (the carrier's signature)
        self.headers = headers
        #: this process's calls: a drain here waits for the relay as for a live call (`CallManager.relaying`)
        self.calls = calls


def ws_url(base: str, raw_path: str) -> str:
    """`http(s)://host:port` + `/path?query` as the websocket URL of the same place."""
    return ws_base(base) + raw_path


async def to_owner(gateway: Any, owner: str | None, request: web.Request,
                   headers: dict[str, str]) -> RelayStream | None:
    """Where a stream of a call that `owner` (another live process) holds goes: the owner's private URL with the
    same path and query, and the upgrade `headers` the owner checks it with; None when the owner is this process
    or not reachable (no live `nodes` row with a private URL)."""
    if not owner or owner == gateway.settings.proc_id:
        return None
    base = await gateway.membership.direct_url(owner)
    return RelayStream(ws_url(base, request.raw_path), owner, headers, gateway.calls) if base else None


async def _pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    async for msg in src:
        if msg.type == WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        else:
            return


async def relay(ws: web.WebSocketResponse, target: RelayStream, replay: Iterable[str],
                connect_timeout: float) -> None:
    """Carry `ws` (the carrier's socket, already accepted) to the owner: send `replay` first, then copy both ways.
    Returns once both sockets are closed; a failure to reach the owner closes the carrier's socket with 1011.
    Until then a drain of this process waits for it (the process exits at the drain timeout at the latest, which
    closes both sockets)."""
    with target.calls.relaying():
        await _relay(ws, target, replay, connect_timeout)


async def _relay(ws: web.WebSocketResponse, target: RelayStream, replay: Iterable[str],
                 connect_timeout: float) -> None:
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http, \
                http.ws_connect(target.url, headers=target.headers, autoping=True, compress=0,
                                max_msg_size=MAX_MESSAGE) as peer:
            for text in replay:
                await peer.send_str(text)
            log.info("media stream relayed to its call's owner", extra={"owner": target.owner})
            up = asyncio.create_task(_pump(ws, peer), name="relay-up")
            down = asyncio.create_task(_pump(peer, ws), name="relay-down")
            done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.warning("media relay ended: %s", type(task.exception()).__name__,
                                extra={"owner": target.owner})
            if down in done:          # the owner closed: the carrier hears its code
                await ws.close(code=peer.close_code or 1000, message=b"stream over")
            else:                     # the carrier closed: so do we, towards the owner
                await peer.close(code=ws.close_code or 1000)
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        log.warning("media stream could not be relayed to its call's owner: %s", type(e).__name__,
                    extra={"owner": target.owner, "url": target.url.split("?", 1)[0]})
        if not ws.closed:
            await ws.close(code=1011, message=b"the call's owner is unreachable")
