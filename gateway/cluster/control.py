"""How a command reaches the process that owns a call: `ControlBus`, in-process or over PostgreSQL LISTEN/NOTIFY.

A command is `request(proc, op, args)`; the owner runs the handler registered for `op` and answers with a
`Reply(status, body)` (an HTTP status and JSON body, so an API request forwarded to the owner gets the owner's
answer unchanged). `None` means nobody answered within the timeout: the caller decides from the owner's heartbeat
whether it is slow or gone.

`PgControl` keeps one dedicated asyncpg connection per process, listening on its own channel (`channel_for`).
Requests and replies are NOTIFY payloads (JSON, at most `MAX_PAYLOAD` bytes; PostgreSQL's limit is 8000):
    request  {"op", "args", "req", "reply_to", "from"}
    reply    {"req", "status", "body", "headers"}
NOTIFY is delivered only to sessions listening when it commits and is not stored: anything that must survive a
restart is a row, a notification only asks a live process (docs/deploy.md, "How control reaches the owner").
The connection is checked every `keepalive` seconds and re-opened (with backoff) when it drops; a command sent
to us while we were reconnecting is lost and its sender times out.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("gateway.cluster")

MAX_PAYLOAD = 7900


@dataclass
class Reply:
    """The owner's answer: an HTTP status, a JSON-able body and response headers (e.g. Retry-After)."""
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


Handler = Callable[[dict[str, Any]], Awaitable[Reply]]


def channel_for(proc: str) -> str:
    """The NOTIFY channel of a process: `gw_<proc>` in lower case letters, digits and `_`; a hash of the real id
    is appended whenever that changed it (or it is too long for an identifier), so distinct ids never share one."""
    clean = re.sub(r"[^a-z0-9_]", "_", proc.lower())
    if clean == proc and len(clean) <= 56:
        return "gw_" + clean
    return f"gw_{clean[:40]}_{hashlib.sha1(proc.encode()).hexdigest()[:16]}"


class ControlBus:
    """Commands to the process that owns a call. Handlers are registered by op name before `start()`."""

    #: True when other processes may own calls (PostgreSQL cluster mode)
    clustered = False
    #: times the bus's connection was re-opened (PgControl counts them; /metrics)
    reconnects = 0

    def __init__(self, proc: str, timeout: float = 5.0) -> None:
        self.proc = proc
        self.timeout = timeout
        self._handlers: dict[str, Handler] = {}

    @property
    def connected(self) -> bool:
        """Can this process receive commands now? (PgControl: its listening connection is up.)"""
        return True

    def handle(self, op: str, handler: Handler) -> None:
        self._handlers[op] = handler

    async def start(self) -> None:
        """Start listening (no-op in process)."""

    async def stop(self) -> None:
        """Stop listening."""

    async def request(self, proc: str, op: str, args: dict[str, Any],
                      timeout: float | None = None) -> Reply | None:
        """Run `op` on `proc` and return its reply; None when it did not answer in time."""
        raise NotImplementedError

    async def run_local(self, op: str, args: dict[str, Any]) -> Reply:
        """Run a registered handler in this process (what the owner does with a request)."""
        handler = self._handlers.get(op)
        if handler is None:
            return Reply(400, {"success": False, "error": f"unknown control op {op!r}", "field": None})
        try:
            return await handler(args)
        except Exception:
            log.exception("control handler failed", extra={"op": op})
            return Reply(500, {"success": False, "error": "internal error (logged on the owning gateway)",
                               "field": None})


class LocalControl(ControlBus):
    """One process (SQLite, or PostgreSQL without a cluster): every live call is here; other owners are gone."""

    async def request(self, proc: str, op: str, args: dict[str, Any],
                      timeout: float | None = None) -> Reply | None:
        if proc == self.proc:
            return await self.run_local(op, args)
        return None


def _asyncpg_dsn(url: str) -> str:
    """`postgresql+asyncpg://…` (SQLAlchemy) or `postgres://…` → the libpq-style URL asyncpg takes."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


class PgControl(ControlBus):
    clustered = True

    def __init__(self, url: str, proc: str, timeout: float = 5.0, keepalive: float = 5.0) -> None:
        super().__init__(proc, timeout)
        self.dsn = _asyncpg_dsn(url)
        self.channel = channel_for(proc)
        self.keepalive = keepalive
        self.reconnects = 0
        self._conn: Any = None
        self._send_lock = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        await self._connect()
        self._supervisor = asyncio.create_task(self._supervise(), name="control-bus")

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        await self._drop()

    async def _connect(self) -> None:
        import asyncpg  # the postgres extra; only cluster mode needs it
        # named so an operator can find each process's listening session in pg_stat_activity
        conn = await asyncpg.connect(self.dsn, timeout=self.timeout,
                                     server_settings={"application_name": f"gateway-control {self.proc}"[:63]})
        await conn.add_listener(self.channel, self._on_notify)
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn
        self._lost.clear()
        self._connected.set()
        log.info("control bus listening", extra={"channel": self.channel})

    def _on_terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._connected.clear()
            self._lost.set()

    async def _drop(self) -> None:
        self._connected.clear()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except Exception:
                conn.terminate()

    async def _supervise(self) -> None:
        """Keep the listening connection alive: ping it every `keepalive` seconds, and re-open it (backing off
        up to 5 s) as soon as it is gone."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self.keepalive)
            except TimeoutError:
                try:
                    async with self._send_lock:
                        await asyncio.wait_for(self._conn.fetchval("SELECT 1"), self.timeout)
                    continue
                except Exception as e:
                    log.warning("control bus ping failed: %s", type(e).__name__)
            log.warning("control bus connection lost; reconnecting")
            await self._drop()
            delay = 0.1
            while True:
                try:
                    await self._connect()
                    self.reconnects += 1
                    break
                except Exception as e:
                    log.warning("control bus reconnect failed: %s", type(e).__name__, extra={"retry_in": delay})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

    # -- wire ---------------------------------------------------------------------------------------------------
    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            msg = json.loads(str(payload))   # asyncpg hands NOTIFY payloads over as str
        except ValueError:
            log.warning("control bus: payload is not JSON")
            return
        if not isinstance(msg, dict):
            return
        if "op" in msg:
            task = asyncio.create_task(self._serve(msg), name=f"control-{msg.get('op')}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        fut = self._waiting.pop(str(msg.get("req")), None)
        if fut is not None and not fut.done():
            body, headers = msg.get("body"), msg.get("headers")
            fut.set_result(Reply(int(msg.get("status") or 500), body if isinstance(body, dict) else {},
                                 {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else None))

    async def _serve(self, msg: dict[str, Any]) -> None:
        args = msg.get("args")
        reply = await self.run_local(str(msg.get("op")), args if isinstance(args, dict) else {})
        reply_to = msg.get("reply_to")
        if not isinstance(reply_to, str) or not reply_to:
            return
        text = json.dumps({"req": msg.get("req"), "status": reply.status, "body": reply.body,
                           "headers": reply.headers}, default=str)
        if len(text.encode()) > MAX_PAYLOAD:
            text = json.dumps({"req": msg.get("req"), "status": 502, "body": {
                "success": False, "error": "the owner's answer is too large for the control bus", "field": None}})
        try:
            await self._send(reply_to, text)
        except Exception as e:
            log.warning("control bus: reply not sent: %s", type(e).__name__, extra={"op": msg.get("op")})

    async def _send(self, channel: str, text: str) -> None:
        if not self.connected or self._conn is None:
            raise ConnectionError("control bus is not connected")
        async with self._send_lock:
            await self._conn.execute("SELECT pg_notify($1, $2)", channel, text)

    async def request(self, proc: str, op: str, args: dict[str, Any],
                      timeout: float | None = None) -> Reply | None:
        if proc == self.proc:
            return await self.run_local(op, args)
        req = uuid.uuid4().hex
        text = json.dumps({"op": op, "args": args, "req": req, "reply_to": self.channel, "from": self.proc},
                          default=str)
        if len(text.encode()) > MAX_PAYLOAD:
            raise ValueError(f"control request {op!r} is larger than {MAX_PAYLOAD} bytes")
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        try:
            try:
                await self._send(channel_for(proc), text)
            except (ConnectionError, OSError) as e:
                return Reply(503, {"success": False, "error": f"control bus unavailable ({type(e).__name__})",
                                   "field": None})
            try:
                return await asyncio.wait_for(fut, self.timeout if timeout is None else timeout)
            except TimeoutError:
                return None
        finally:
            self._waiting.pop(req, None)


def make_control(db_url: str, proc: str, timeout: float = 5.0, keepalive: float = 5.0) -> ControlBus:
    """PostgreSQL store → cluster mode over LISTEN/NOTIFY; SQLite → this process alone."""
    if db_url.startswith(("postgresql", "postgres://")):
        return PgControl(db_url, proc, timeout=timeout, keepalive=keepalive)
    return LocalControl(proc, timeout)
