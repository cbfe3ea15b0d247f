"""Websocket bridge to an out-of-process voice engine, in both directions (protocol: docs/engine-protocol.md).

* Connect mode, engine spec `ws://…` / `wss://…`: for each call the gateway opens a websocket to the engine's URL.
* Accept mode, engine spec `accept` / `accept:<pool>`: engine processes connect to the gateway's
  `GET /engine/ws?pool=<pool>` (API key as a Bearer token) and wait; each call takes one idle connection, so an
  engine keeps N idle connections open to serve N concurrent calls. A call that finds no engine within
  `AcceptEngine.wait_s` is hung up with reason `engine_unavailable`.

Either way one websocket carries one call: a JSON `start`, then 20 ms binary PCM16 frames both ways and JSON
control messages. A broken engine never hangs a call: every failure ends it (hangup source `agent`) with
`engine_unreachable`, `engine_disconnected` or `engine_protocol_error`, and the gateway closes the websocket
with a code that says why (1003 unknown message type, 1007 not JSON, 1008 a field is wrong).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

import websockets
from aiohttp import WSMsgType, web
from websockets.asyncio.client import connect

from ..frames import (AmdResult, AudioFrame, Dtmf, Hangup, Mark, SpeechActivity, TransferResult)
from .base import EngineSession, VoiceEngine

if TYPE_CHECKING:
    from ..runtime import Gateway

log = logging.getLogger("gateway.engine.ws")

PROTOCOL_VERSION = 1
ENGINE_RATES = (8000, 16000, 24000)
DEFAULT_RATE = 16000
MAX_MESSAGE = 4 * 1024 * 1024     # 87 s of 24 kHz audio in one message is plenty
ROUTE = "/engine/ws"

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003          # unknown message type
CLOSE_INVALID_PAYLOAD = 1007      # text frame that is not a JSON object
CLOSE_POLICY = 1008               # valid JSON breaking the protocol (missing/wrong field, message before start)
_PROTOCOL_CLOSES = {1002, CLOSE_UNSUPPORTED, CLOSE_INVALID_PAYLOAD, CLOSE_POLICY, 1009}

_DIGITS = re.compile(r"^[0-9A-Da-d*#]{1,32}$")
_POOL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class EngineProtocolError(Exception):
    def __init__(self, message: str, code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.code = code


class EngineClosed(Exception):
    """The websocket is closed; `by_gateway` when the gateway's side closed it (e.g. a frame it could not parse)."""

    def __init__(self, code: int | None, reason: str = "", by_gateway: bool = False) -> None:
        super().__init__(f"closed {code} {reason}".strip())
        self.code = code
        self.reason = reason
        self.by_gateway = by_gateway


def parse_sample_rate(query: str) -> int:
    values = parse_qs(query).get("sample_rate")
    if not values:
        return DEFAULT_RATE
    try:
        rate = int(values[-1])
    except ValueError:
        rate = 0
    if rate not in ENGINE_RATES:
        raise ValueError(f"sample_rate must be one of {', '.join(map(str, ENGINE_RATES))}, not {values[-1]!r}")
    return rate


def parse_engine_message(text: str) -> dict[str, Any]:
    """Validate one engine → gateway control message; raises EngineProtocolError with the close code to use."""
    try:
        msg = json.loads(text)
    except ValueError as e:
        raise EngineProtocolError(f"invalid JSON: {e}", CLOSE_INVALID_PAYLOAD) from None
    if not isinstance(msg, dict):
        raise EngineProtocolError("a control message must be a JSON object", CLOSE_INVALID_PAYLOAD)
    kind = msg.get("type")
    if kind not in _ENGINE_MESSAGES:
        raise EngineProtocolError(f"unknown message type {kind!r}", CLOSE_UNSUPPORTED)
    for name, (kinds, required) in _ENGINE_MESSAGES[kind].items():
        value = msg.get(name)
        if value is None:
            if required:
                raise EngineProtocolError(f"{kind}: missing field {name!r}")
            continue
        if not isinstance(value, kinds) or (isinstance(value, str) and not value.strip()):
            raise EngineProtocolError(f"{kind}: field {name!r} must be a non-empty string")
    if kind == "dtmf" and not _DIGITS.match(msg["digits"]):
        raise EngineProtocolError("dtmf: digits must be 1-32 of 0-9 A-D * #")
    return msg


# type → {field: (accepted types, required)}
_ENGINE_MESSAGES: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "clear": {},
    "mark": {"name": (str, True)},
    "dtmf": {"digits": (str, True)},
    "transfer": {"number": (str, False)},
    "hangup": {"reason": (str, False)},
}


def event_message(item: Any) -> dict[str, Any] | None:
    """The gateway → engine JSON for a bus event, or None for events engines do not get."""
    if isinstance(item, Dtmf):
        return {"type": "dtmf", "digit": item.digit, "duration_ms": item.duration_ms}
    if isinstance(item, Mark):
        return {"type": "mark", "name": item.name}
    if isinstance(item, SpeechActivity):
        return {"type": "speech", "speaking": item.speaking}
    if isinstance(item, AmdResult):
        return {"type": "amd", "answered_by": item.answered_by.value, "duration_ms": item.duration_ms}
    if isinstance(item, TransferResult):
        return {"type": "transfer_result", "target": item.target, "outcome": item.outcome}
    if isinstance(item, Hangup):
        return {"type": "hangup", "source": item.source.value, "reason": item.reason}
    return None


def start_message(session: EngineSession) -> dict[str, Any]:
    info = session.info
    metadata = dict(info.get("metadata") or {})
    call_context = metadata.pop("call_context", None)
    return {
        "type": "start", "protocol": PROTOCOL_VERSION, "call_id": info["call_id"], "carrier": info["carrier"],
        "direction": info["direction"], "from": info["from_number"], "to": info["to_number"],
        "agent_id": info.get("agent_id"), "custom_parameters": metadata, "call_context": call_context or {},
        "audio": {"encoding": "pcm_s16le", "sample_rate": session.sample_rate, "channels": 1, "frame_ms": 20},
    }


class Transport(Protocol):
    async def send(self, data: str | bytes) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def close(self, code: int, reason: str) -> None: ...


class Bridge:
    """Runs one call over one engine websocket until either side ends."""

    def __init__(self, session: EngineSession, transport: Transport, peer: str) -> None:
        self.session = session
        self.transport = transport
        self.log = logging.LoggerAdapter(log, {"call_id": session.call_id, "engine": peer})
        self.engine_hung_up = False

    async def run(self) -> None:
        session = self.session
        try:
            await self.transport.send(json.dumps(start_message(session)))
        except EngineClosed as e:
            return await self._failed("engine_disconnected", f"closed before start ({e.code})")
        to_engine = asyncio.create_task(self._to_engine(), name=f"engine-out-{session.call_id}")
        from_engine = asyncio.create_task(self._from_engine(), name=f"engine-in-{session.call_id}")
        try:
            done, _ = await asyncio.wait({to_engine, from_engine}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_engine, from_engine):
                task.cancel()
            await asyncio.gather(to_engine, from_engine, return_exceptions=True)
        if to_engine in done and not to_engine.cancelled() and to_engine.exception() is None:
            error = None
        else:
            task = from_engine if from_engine in done else to_engine
            error = task.exception() if not task.cancelled() else EngineClosed(None)
        if error is None:
            # the call ended and the engine has been told: close normally
            await self._close(CLOSE_NORMAL, "call ended")
        elif isinstance(error, EngineProtocolError):
            self.log.warning("engine protocol error: %s", error, extra={"close_code": error.code})
            await self._close(error.code, str(error))
            await self._failed("engine_protocol_error", str(error))
        elif isinstance(error, EngineClosed):
            if error.by_gateway and error.code in _PROTOCOL_CLOSES:
                await self._failed("engine_protocol_error", f"websocket error {error.code} {error.reason}")
            elif not self.engine_hung_up:
                await self._failed("engine_disconnected", f"engine closed the websocket ({error.code})")
        else:
            raise error

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.transport.close(code, reason[:120]), 2.0)
        except (asyncio.TimeoutError, EngineClosed, OSError):
            pass

    async def _failed(self, reason: str, detail: str) -> None:
        self.log.warning("engine failed, hanging up: %s", detail, extra={"reason": reason})
        await self.session.hangup(reason)

    async def _to_engine(self) -> None:
        send = self.transport.send
        async for item in self.session:
            if isinstance(item, AudioFrame):
                await send(item.pcm)
            elif (msg := event_message(item)) is not None:
                await send(json.dumps(msg))

    async def _from_engine(self) -> None:
        session, recv = self.session, self.transport.recv
        while True:
            data = await recv()
            if isinstance(data, bytes):
                if data:
                    await session.play(data)  # any size: the bus re-frames to 20 ms
                continue
            msg = parse_engine_message(data)
            kind = msg["type"]
            if kind == "clear":
                session.clear()
            elif kind == "mark":
                await session.mark(msg["name"])
            elif kind == "dtmf":
                await session.send_dtmf(msg["digits"])
            elif kind == "transfer":
                await session.transfer(msg.get("number"))
            elif kind == "hangup":
                self.engine_hung_up = True
                await session.hangup(msg.get("reason") or "agent_hangup")


# -- connect mode -------------------------------------------------------------------------------------------------
class _ClientTransport:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @staticmethod
    def _closed(e: websockets.ConnectionClosed) -> EngineClosed:
        by_gateway = e.sent is not None and (e.rcvd is None or not e.rcvd_then_sent)
        frame = e.sent if by_gateway else e.rcvd
        return EngineClosed(frame.code if frame else 1006, frame.reason if frame else "", by_gateway)

    async def send(self, data: str | bytes) -> None:
        try:
            await self.ws.send(data)
        except websockets.ConnectionClosed as e:
            raise self._closed(e) from None

    async def recv(self) -> str | bytes:
        try:
            return await self.ws.recv()
        except websockets.ConnectionClosed as e:
            raise self._closed(e) from None

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)


class WebSocketEngine(VoiceEngine):
    """Connect mode: one websocket to `url` per call; `?sample_rate=8000|16000|24000` picks the audio rate."""

    connect_timeout = 5.0

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"engine URL must be ws://host… or wss://host…, not {url!r}")
        self.url = url
        self.sample_rate = parse_sample_rate(parts.query)
        self._peer = f"{parts.scheme}://{parts.hostname}{':%d' % parts.port if parts.port else ''}{parts.path}"

    async def handle_call(self, session: EngineSession) -> None:
        try:
            ws = await connect(self.url, open_timeout=self.connect_timeout, max_size=MAX_MESSAGE,
                               compression=None, ping_interval=10, ping_timeout=10, close_timeout=2,
                               user_agent_header="telephony-gateway")
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as e:
            # the password a URL may carry is never logged: only scheme, host, port and path
            log.warning("engine unreachable: %s", type(e).__name__,
                        extra={"call_id": session.call_id, "engine": self._peer, "error": str(e)[:200]})
            await session.hangup("engine_unreachable")
            return
        try:
            await Bridge(session, _ClientTransport(ws), self._peer).run()
        finally:
            await ws.close()


# -- accept mode --------------------------------------------------------------------------------------------------
def parse_accept_spec(spec: str) -> tuple[str, int]:
    """`accept`, `accept:<pool>`, either with `?sample_rate=…` → (pool, sample_rate)."""
    head, _, query = spec.partition("?")
    name, _, pool = head.partition(":")
    if name != "accept":
        raise ValueError(f"not an accept engine spec: {spec!r}")
    pool = pool or "default"
    if not _POOL.match(pool):
        raise ValueError(f"engine pool name must be 1-64 of A-Z a-z 0-9 _ . -, not {pool!r}")
    return pool, parse_sample_rate(query)


class _ServerTransport:
    """An engine connection accepted by the aiohttp server; `pending` is the read started while it was idle."""

    def __init__(self, ws: web.WebSocketResponse, pending: asyncio.Future) -> None:
        self.ws = ws
        self.pending: asyncio.Future | None = pending

    async def send(self, data: str | bytes) -> None:
        if self.ws.closed:
            raise EngineClosed(self.ws.close_code, "", False)
        try:
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_str(data)
        except (ConnectionError, RuntimeError):
            raise EngineClosed(self.ws.close_code or 1006, "", False) from None

    async def recv(self) -> str | bytes:
        if self.pending is not None:
            msg, self.pending = await self.pending, None
        else:
            msg = await self.ws.receive()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            return msg.data
        if msg.type is WSMsgType.ERROR:  # aiohttp has already closed with the matching code (1007, 1009…)
            raise EngineClosed(getattr(msg.data, "code", None) or self.ws.close_code, str(msg.data), True)
        raise EngineClosed(self.ws.close_code, str(msg.extra or ""), False)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())


@dataclass(eq=False)
class EngineConnection:
    pool: str
    transport: _ServerTransport
    remote: str
    claimed: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class EngineHub:
    """Idle engine connections per pool, and the calls waiting for one."""

    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self._idle: dict[str, deque[EngineConnection]] = {}
        self._waiting: dict[str, deque[asyncio.Future]] = {}
        self._open: set[EngineConnection] = set()

    def idle_count(self, pool: str = "default") -> int:
        return len(self._idle.get(pool, ()))

    def _offer(self, conn: EngineConnection) -> None:
        waiters = self._waiting.get(conn.pool)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                conn.claimed.set_result(True)
                return
        self._idle.setdefault(conn.pool, deque()).append(conn)

    def _withdraw(self, conn: EngineConnection) -> None:
        idle = self._idle.get(conn.pool)
        if idle and conn in idle:
            idle.remove(conn)

    async def claim(self, pool: str, timeout: float) -> EngineConnection | None:
        idle = self._idle.get(pool)
        if idle:
            conn = idle.popleft()
            conn.claimed.set_result(True)
            return conn
        fut = asyncio.get_running_loop().create_future()
        waiters = self._waiting.setdefault(pool, deque())
        waiters.append(fut)
        try:
            await asyncio.wait({fut}, timeout=timeout)
        finally:
            if not fut.done():
                fut.cancel()
                if fut in waiters:
                    waiters.remove(fut)
        return fut.result() if not fut.cancelled() else None

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        key = self.gateway.api_key or ""
        return bool(key) and scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """`GET /engine/ws?pool=<name>`: an engine offers itself for one call."""
        if not self._authorized(request):
            return _error(401, "missing or wrong API key: send `Authorization: Bearer <api key>`", None,
                          {"WWW-Authenticate": 'Bearer realm="telephony-gateway"'})
        pool = request.query.get("pool", "default")
        if not _POOL.match(pool):
            return _error(400, "pool must be 1-64 of A-Z a-z 0-9 _ . -", "pool")
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=MAX_MESSAGE, compress=False)
        if not ws.can_prepare(request).ok:
            return _error(400, "expected a websocket upgrade", None)
        await ws.prepare(request)
        pending = asyncio.ensure_future(ws.receive())
        conn = EngineConnection(pool, _ServerTransport(ws, pending), request.remote or "")
        self._open.add(conn)
        self._offer(conn)
        log.info("engine connected", extra={"pool": pool, "remote": conn.remote})
        try:
            await asyncio.wait({pending, conn.claimed}, return_when=asyncio.FIRST_COMPLETED)
            if conn.claimed.done():
                await conn.finished.wait()  # the call's bridge owns the socket until it is done
            else:  # the engine spoke (or left) before being handed a call
                self._withdraw(conn)
                msg = pending.result()
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await ws.close(code=CLOSE_POLICY, message=b"no message expected before start")
        finally:
            self._withdraw(conn)
            self._open.discard(conn)
            if not conn.claimed.done():
                conn.claimed.cancel()
            if not pending.done():
                pending.cancel()
        return ws

    async def shutdown(self, app: web.Application) -> None:
        for conn in list(self._open):
            self._withdraw(conn)
            if not conn.claimed.done():
                await conn.transport.ws.close(code=CLOSE_GOING_AWAY, message=b"gateway shutting down")


def _error(status: int, message: str, field_name: str | None, headers: dict[str, str] | None = None):
    return web.json_response({"success": False, "error": message, "field": field_name}, status=status,
                             headers=headers)


class AcceptEngine(VoiceEngine):
    """Accept mode: the call is handed to an engine connected to `GET /engine/ws?pool=<pool>`."""

    wait_s = 5.0

    def __init__(self, spec: str, hub: EngineHub | None) -> None:
        self.pool, self.sample_rate = parse_accept_spec(spec)
        self.hub = hub

    async def handle_call(self, session: EngineSession) -> None:
        conn = await self.hub.claim(self.pool, self.wait_s) if self.hub is not None else None
        if conn is None:
            log.warning("no engine connected", extra={"call_id": session.call_id, "pool": self.pool})
            await session.hangup("engine_unavailable")
            return
        try:
            await Bridge(session, conn.transport, f"accepted:{conn.remote}").run()
        finally:
            conn.finished.set()


def setup_routes(app: web.Application, gateway: "Gateway") -> EngineHub:
    """Expose `GET /engine/ws` for accept-mode engines and let the engine registry hand calls to them."""
    hub = EngineHub(gateway)
    gateway.engines.accept_hub = hub
    app.router.add_get(ROUTE, hub.handle)
    app.on_shutdown.append(hub.shutdown)
    return hub
