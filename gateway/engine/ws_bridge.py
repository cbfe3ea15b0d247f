"""Websocket bridge to an out-of-process voice engine, in both directions (protocol: docs/engine-protocol.md).

* Connect mode, engine spec `ws://…` / `wss://…`: for each call the gateway opens a websocket to the engine's URL.
* Accept mode, engine spec `accept` / `accept:<pool>`: engine processes connect to the gateway's
  `GET /engine/ws?pool=<pool>` (API key as a Bearer token) and wait; each call takes one idle connection, so an
  engine keeps N idle connections open to serve N concurrent calls. A call that finds no engine within
  `AcceptEngine.wait_s` is hung up with reason `engine_unavailable`. In a cluster an idle engine may wait on
  another process (workers share one HTTP port): a call that finds its pool empty asks the other live processes
  over the control bus (op `engine:redirect`), and the first holding an idle engine of that pool sends it
  `{"type": "redirect", "url": …}` naming this process's own engine URL, where the engine reconnects.

Either way one websocket carries one call: a JSON `start`, then 20 ms binary PCM16 frames both ways and JSON
control messages. A broken engine never hangs a call: every failure ends it (hangup source `agent`) with
`engine_unreachable`, `engine_disconnected` or `engine_protocol_error`, and the gateway closes the websocket
with a code that says why (1003 unknown message type, 1007 not JSON, 1008 a field is wrong).
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

import websockets
from aiohttp import WSMessage, WSMsgType, web
from websockets.asyncio.client import connect

from .. import safejson
from ..cluster import Reply
from ..frames import (
    AmdResult,
    AudioFrame,
    ConsultEvent,
    Dtmf,
    Hangup,
    HoldState,
    Mark,
    MuteState,
    SayThenTransfer,
    SpeechActivity,
    TransferResult,
)
from ..logsetup import ContextLogger
from .base import EngineSession, VoiceEngine

if TYPE_CHECKING:
    from ..runtime import Gateway

log = logging.getLogger("gateway.engine.ws")

PROTOCOL_VERSION = 1
ENGINE_RATES = (8000, 16000, 24000)
DEFAULT_RATE = 16000
MAX_MESSAGE = 4 * 1024 * 1024     # 87 s of 24 kHz audio in one message is plenty
ROUTE = "/engine/ws"
REDIRECT_OP = "engine:redirect"   # control-bus op: "send one idle engine of pool P to this URL"
REDIRECT_ASK_S = 1.0              # how long a call waits for each other process's answer to that op

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
        msg = safejson.loads(text)
    except safejson.BadJson as e:
        raise EngineProtocolError(f"invalid JSON: {e}", CLOSE_INVALID_PAYLOAD) from None
    if not isinstance(msg, dict):
        raise EngineProtocolError("a control message must be a JSON object", CLOSE_INVALID_PAYLOAD)
    kind = msg.get("type")
    if kind not in _ENGINE_MESSAGES:
        raise EngineProtocolError(f"unknown message type {kind!r}", CLOSE_UNSUPPORTED)
    for name, (required, max_len) in _ENGINE_MESSAGES[kind].items():
        value = msg.get(name)
        if value is None:
            if required:
                raise EngineProtocolError(f"{kind}: missing field {name!r}")
            continue
        if not isinstance(value, str) or not value.strip() or len(value) > max_len:
            raise EngineProtocolError(f"{kind}: field {name!r} must be a non-empty string of at most {max_len} "
                                      "characters")
    if kind == "dtmf" and not _DIGITS.match(msg["digits"]):
        raise EngineProtocolError("dtmf: digits must be 1-32 of 0-9 A-D * #")
    return msg


# type → {string field: (required, max length)}; lengths fit the call-log columns they end up in
_ENGINE_MESSAGES: dict[str, dict[str, tuple[bool, int]]] = {
    "clear": {},
    "mark": {"name": (True, 200)},
    "dtmf": {"digits": (True, 32)},
    "transfer": {"number": (False, 64)},
    "consult": {"number": (False, 64), "message": (False, 2000)},
    "consult_complete": {},
    "consult_cancel": {},
    "hangup": {"reason": (False, 200)},
    "hold": {},
    "unhold": {},
    "mute": {},
    "unmute": {},
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
        msg = {"type": "amd", "answered_by": item.answered_by.value, "duration_ms": item.duration_ms}
        if item.voicemail_message:
            msg["voicemail_message"] = item.voicemail_message   # speak it, then hang up with reason "voicemail"
        return msg
    if isinstance(item, TransferResult):
        return {"type": "transfer_result", "target": item.target, "outcome": item.outcome}
    if isinstance(item, ConsultEvent):      # attended transfer: while "answered" the audio is the target's
        msg = {"type": "consult", "state": item.state, "number": item.number, "reason": item.reason}
        if item.message:
            msg["message"] = item.message       # text to say to the target
        return msg
    if isinstance(item, SayThenTransfer):   # speak it, then send {"type": "transfer", "number": number}
        return {"type": "say", "text": item.text, "then": "transfer", "number": item.number}
    if isinstance(item, HoldState):
        return {"type": "hold", "held": item.held, "source": item.source}
    if isinstance(item, MuteState):
        return {"type": "mute", "muted": item.muted, "source": item.source}
    if isinstance(item, Hangup):
        return {"type": "hangup", "source": item.source.value, "reason": item.reason}
    return None


def redirect_message(url: str) -> dict[str, Any]:
    """Gateway → idle engine: reconnect to `url` (another process of the cluster has a call for you); the
    gateway then closes this connection with 1000."""
    return {"type": "redirect", "url": url}


def start_message(session: EngineSession) -> dict[str, Any]:
    info = session.info
    metadata = dict(info.get("metadata") or {})
    call_context = metadata.pop("call_context", None)
    return {
        "type": "start", "protocol": PROTOCOL_VERSION, "call_id": info["call_id"], "carrier": info["carrier"],
        "carrier_call_id": info.get("carrier_sid"),
        "direction": info["direction"], "from": info["from_number"], "to": info["to_number"],
        "agent_id": info.get("agent_id"), "custom_parameters": metadata, "call_context": call_context or {},
        "audio": {"encoding": "pcm_s16le", "sample_rate": session.sample_rate, "channels": 1, "frame_ms": 20},
        "transfer": session.transfer_options,
    }


class Transport(Protocol):
    async def send(self, data: str | bytes) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def close(self, code: int, reason: str) -> None: ...


class Playout:
    """Engine → caller items in arrival order (audio and actions), carried out by one task.

    The websocket reader never waits on playback, so a `clear` (barge-in) takes effect at once even when the
    engine has sent a long utterance ahead of real time: `clear()` stops the task, drops the audio not yet handed
    to the bus (actions such as marks and transfers stay, in order) and restarts it. At most `max_bytes` of audio
    wait here; beyond that the reader pauses, which back-pressures the engine through TCP.
    """

    def __init__(self, session: EngineSession, max_seconds: float = 30.0) -> None:
        self.session = session
        self.max_bytes = int(session.sample_rate * 2 * max_seconds)
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()   # only ever an exception
        self._items: deque[bytes | Callable[[], Awaitable[None]]] = deque()
        self._audio_bytes = 0
        self._current: Any = None
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"engine-play-{self.session.call_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def audio(self, pcm: bytes) -> None:
        while self._audio_bytes >= self.max_bytes:
            self._room.clear()
            await self._room.wait()
        self._audio_bytes += len(pcm)
        self._push(pcm)

    def action(self, act: Callable[[], Awaitable[None]]) -> None:
        self._push(act)

    def _push(self, item: Any) -> None:
        self._items.append(item)
        self._idle.clear()
        self._ready.set()

    async def clear(self) -> None:
        await self.stop()
        if callable(self._current):  # an action interrupted before it took effect runs after the clear
            self._items.appendleft(self._current)
        self._current = None
        self._items = deque(i for i in self._items if not isinstance(i, bytes))
        self._audio_bytes = 0
        self._room.set()
        self.session.clear()
        self.start()

    async def drained(self) -> None:
        """Wait until everything queued so far has been handed to the call."""
        await self._idle.wait()

    async def _run(self) -> None:
        try:
            while True:
                if not self._items:
                    self._idle.set()
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                item = self._current = self._items.popleft()
                if isinstance(item, bytes):
                    self._audio_bytes -= len(item)
                    self._room.set()
                    await self.session.play(item)  # any size: the bus re-frames to 20 ms
                else:
                    await item()
                self._current = None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug, not an engine fault: surface it to the bridge
            if not self.failed.done():
                self.failed.set_exception(e)


class Bridge:
    """Runs one call over one engine websocket until either side ends."""

    def __init__(self, session: EngineSession, transport: Transport, peer: str) -> None:
        self.session = session
        self.transport = transport
        self.log = ContextLogger(log, {"call_id": session.call_id, "engine": peer})
        self.engine_hung_up = False

    async def run(self) -> None:
        session = self.session
        try:
            await self.transport.send(json.dumps(start_message(session)))
        except EngineClosed as e:
            return await self._failed("engine_disconnected", f"closed before start ({e.code})")
        self.playout = playout = Playout(session)
        playout.start()
        to_engine = asyncio.create_task(self._to_engine(), name=f"engine-out-{session.call_id}")
        from_engine = asyncio.create_task(self._from_engine(), name=f"engine-in-{session.call_id}")
        drained: asyncio.Task[None] | None = None
        try:
            await asyncio.wait({to_engine, from_engine, playout.failed}, return_when=asyncio.FIRST_COMPLETED)
            failure = playout.failed.exception() if playout.failed.done() else None
            if failure is not None:
                raise failure
            error = self._outcome(to_engine, from_engine)
            if isinstance(error, EngineClosed) and not to_engine.done():
                # The engine is gone: what it already sent (a goodbye, its hangup) is still carried out first,
                # unless the call ends meanwhile.
                drained = asyncio.create_task(playout.drained())
                await asyncio.wait({to_engine, drained}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_engine, from_engine, drained):
                if task is not None:
                    task.cancel()
            await asyncio.gather(to_engine, from_engine, *([drained] if drained else []), return_exceptions=True)
            await playout.stop()
        if error is None:
            # the call ended and the engine has been told: close normally
            await self._close(CLOSE_NORMAL, "call ended")
        elif isinstance(error, EngineProtocolError):
            self.log.warning("engine protocol error: %s", error, extra={"close_code": error.code})
            await self._close(error.code, str(error))
            await self._failed("engine_protocol_error", str(error))
        elif error.by_gateway and error.code in _PROTOCOL_CLOSES:
            await self._failed("engine_protocol_error", f"websocket error {error.code} {error.reason}")
        elif not self.engine_hung_up:
            await self._failed("engine_disconnected", f"engine closed the websocket ({error.code})")

    @staticmethod
    def _outcome(to_engine: asyncio.Task[None], from_engine: asyncio.Task[None]
                 ) -> EngineProtocolError | EngineClosed | None:
        """None when the call ended normally, else what went wrong with the engine."""
        if to_engine.done() and to_engine.exception() is None:
            return None
        task = from_engine if from_engine.done() else to_engine
        error = task.exception()
        if error is None or isinstance(error, (EngineProtocolError, EngineClosed)):
            return error
        raise error

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.transport.close(code, reason[:120]), 2.0)
        except (TimeoutError, EngineClosed, OSError):
            pass

    async def _failed(self, reason: str, detail: str) -> None:
        if self.session.ended:
            return
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
        session, recv, playout = self.session, self.transport.recv, self.playout
        while True:
            data = await recv()
            if isinstance(data, bytes):
                if data:
                    await playout.audio(data)
                continue
            msg = parse_engine_message(data)
            kind = msg["type"]
            if kind == "clear":
                await playout.clear()
            elif kind == "mark":
                playout.action(functools.partial(session.mark, msg["name"]))
            elif kind == "dtmf":
                playout.action(functools.partial(session.send_dtmf, msg["digits"]))
            elif kind == "transfer":
                playout.action(functools.partial(session.transfer, msg.get("number")))
            elif kind == "consult":
                playout.action(functools.partial(session.consult, msg.get("number"), msg.get("message")))
            elif kind == "consult_complete":
                playout.action(session.consult_complete)
            elif kind == "consult_cancel":
                playout.action(session.consult_cancel)
            elif kind == "hangup":
                self.engine_hung_up = True
                playout.action(functools.partial(session.hangup, msg.get("reason") or "agent_hangup"))
            elif kind == "hold":            # in order: after the audio sent before it ("please hold")
                playout.action(session.hold)
            elif kind == "unhold":          # at once: the engine's audio waits behind the hold
                await session.unhold()
            elif kind == "mute":
                await session.mute()
            elif kind == "unmute":
                await session.unmute()


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
            data: str | bytes = await self.ws.recv()
            return data
        except websockets.ConnectionClosed as e:
            raise self._closed(e) from None

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)


class WebSocketEngine(VoiceEngine):
    """Connect mode: one websocket to `url` per call; `?sample_rate=8000|16000|24000` picks the audio rate."""

    speaks_text = True   # the protocol's `say` (docs/engine-protocol.md)

    connect_timeout = 5.0

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError("engine URL must be ws://host[:port]/path or wss://host[:port]/path")
        self.url = url
        self.sample_rate = parse_sample_rate(parts.query)
        self._peer = f"{parts.scheme}://{parts.hostname}{':%d' % parts.port if parts.port else ''}{parts.path}"

    async def handle_call(self, session: EngineSession) -> None:
        try:
            ws = await connect(self.url, open_timeout=self.connect_timeout, max_size=MAX_MESSAGE,
                               compression=None, ping_interval=10, ping_timeout=10, close_timeout=2,
                               user_agent_header="telephony-gateway")
        except (TimeoutError, OSError, websockets.InvalidHandshake, websockets.InvalidURI) as e:
            # the password a URL may carry is never logged: only scheme, host, port and path
            detail = "" if isinstance(e, websockets.InvalidURI) else str(e)[:200]
            log.warning("engine unreachable: %s %s", type(e).__name__, detail,
                        extra={"call_id": session.call_id, "engine": self._peer})
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

    def __init__(self, ws: web.WebSocketResponse, pending: asyncio.Future[WSMessage]) -> None:
        self.ws = ws
        self.pending: asyncio.Future[WSMessage] | None = pending

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
            data: str | bytes = msg.data
            return data
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
    claimed: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class EngineHub:
    """Idle engine connections per pool, and the calls waiting for one."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._idle: dict[str, deque[EngineConnection]] = {}
        self._waiting: dict[str, deque[asyncio.Future[EngineConnection]]] = {}
        self._open: set[EngineConnection] = set()
        self._closing: set[asyncio.Task[None]] = set()   # redirected connections being closed

    def idle_count(self, pool: str = "default") -> int:
        return len(self._idle.get(pool, ()))

    def _offer(self, conn: EngineConnection) -> None:
        waiters = self._waiting.get(conn.pool)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._idle.setdefault(conn.pool, deque()).append(conn)

    def _withdraw(self, conn: EngineConnection) -> None:
        idle = self._idle.get(conn.pool)
        if idle and conn in idle:
            idle.remove(conn)

    def _take_idle(self, pool: str) -> EngineConnection | None:
        """Claim the longest-idle live connection of `pool`, if any."""
        idle = self._idle.get(pool)
        while idle:
            conn = idle.popleft()
            pending = conn.transport.pending
            if pending is None or not pending.done():  # else the engine spoke or left while idle
                conn.claimed.set_result(True)
                return conn
        return None

    async def claim(self, pool: str, timeout: float) -> EngineConnection | None:
        """The longest-idle live connection of `pool`, waiting up to `timeout` s for one to connect (in a
        cluster, also asking the other processes to redirect one of theirs here meanwhile)."""
        conn = self._take_idle(pool)
        if conn is not None:
            return conn
        fut: asyncio.Future[EngineConnection] = asyncio.get_running_loop().create_future()
        waiters = self._waiting.setdefault(pool, deque())
        waiters.append(fut)
        summon = (asyncio.create_task(self._summon(pool), name=f"engine-summon-{pool}")
                  if self.gateway.control.clustered else None)
        try:
            await asyncio.wait({fut}, timeout=timeout)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._offer(fut.result())  # the call went away meanwhile: the engine serves the next one
            raise
        finally:
            if summon is not None:
                summon.cancel()
            if not fut.done():
                fut.cancel()
                if fut in waiters:
                    waiters.remove(fut)
        if fut.cancelled():
            return None
        conn = fut.result()
        conn.claimed.set_result(True)
        return conn

    def engine_url(self, pool: str) -> str:
        """The websocket URL at which an engine of `pool` reaches this process and no other."""
        base = self.gateway.direct_url
        base = "wss://" + base[8:] if base.startswith("https://") else "ws://" + base.split("://", 1)[1]
        return f"{base}{ROUTE}?{urlencode({'pool': pool})}"

    async def _summon(self, pool: str) -> None:
        """Ask the other live processes, one at a time in random order, to redirect one idle engine of `pool`
        here; stop at the first that does (the engine then arrives through `handle` and meets our waiter)."""
        gw = self.gateway
        try:
            peers = [p for p in await gw.membership.alive_procs() if p != gw.settings.proc_id]
            random.shuffle(peers)
            args = {"pool": pool, "url": self.engine_url(pool)}
            for proc in peers:
                reply = await gw.control.request(proc, REDIRECT_OP, args, timeout=REDIRECT_ASK_S)
                if reply is not None and reply.ok:
                    log.info("idle engine redirected here", extra={"pool": pool, "from_proc": proc})
                    return
        except Exception as e:  # the store or the bus is down: the call just waits for a local engine
            log.warning("cannot ask the other processes for an engine: %s", type(e).__name__, extra={"pool": pool})

    async def redirect(self, args: dict[str, Any]) -> Reply:
        """Control op `engine:redirect` {pool, url}: send one idle engine of `pool` to `url` (another process
        whose call found no engine). 200 when one was sent, 404 when this process has none idle."""
        pool, url = args.get("pool"), args.get("url")
        if not isinstance(pool, str) or not _POOL.match(pool):
            return Reply(400, {"success": False, "error": "pool must be 1-64 of A-Z a-z 0-9 _ . -", "field": "pool"})
        if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss") or len(url) > 2000:
            return Reply(400, {"success": False, "error": "url must be a ws:// or wss:// URL", "field": "url"})
        while (conn := self._take_idle(pool)) is not None:
            try:
                await conn.transport.send(json.dumps(redirect_message(url)))
            except EngineClosed:
                conn.finished.set()
                continue  # it left meanwhile: try the next idle one
            # answer now; the close handshake (up to 2 s with a slow engine) must not hold up the waiting call
            task = asyncio.create_task(self._close_redirected(conn), name="engine-redirected")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            log.info("idle engine redirected", extra={"pool": pool, "remote": conn.remote})
            return Reply(200, {"success": True, "pool": pool})
        return Reply(404, {"success": False, "error": f"no idle engine in pool {pool!r}", "field": "pool"})

    @staticmethod
    async def _close_redirected(conn: EngineConnection) -> None:
        try:
            await asyncio.wait_for(conn.transport.close(CLOSE_NORMAL, "redirect"), 2.0)
        except (TimeoutError, EngineClosed, OSError):
            pass
        finally:
            conn.finished.set()

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return self.gateway.api_key_ok(token.strip() if scheme.lower() == "bearer" else "", request.remote or "",
                                       path=request.path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """`GET /engine/ws?pool=<name>`: an engine offers itself for one call."""
        wait = self.gateway.api_throttle.banned(request.remote or "")
        if wait:
            return _error(429, "too many failed API key attempts from this address: try again later", None,
                          {"Retry-After": str(math.ceil(wait))})
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
            either: set[asyncio.Future[Any]] = {pending, conn.claimed}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
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


def _error(status: int, message: str, field_name: str | None, headers: dict[str, str] | None = None
           ) -> web.Response:
    return web.json_response({"success": False, "error": message, "field": field_name}, status=status,
                             headers=headers)


class AcceptEngine(VoiceEngine):
    """Accept mode: the call is handed to an engine connected to `GET /engine/ws?pool=<pool>`."""

    speaks_text = True   # the protocol's `say` (docs/engine-protocol.md)

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


def setup_routes(app: web.Application, gateway: Gateway) -> EngineHub:
    """Expose `GET /engine/ws` for accept-mode engines and let the engine registry hand calls to them."""
    hub = EngineHub(gateway)
    gateway.engines.accept_hub = hub
    app.router.add_get(ROUTE, hub.handle)
    gateway.control.handle(REDIRECT_OP, hub.redirect)
    app.on_shutdown.append(hub.shutdown)
    return hub
