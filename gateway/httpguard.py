"""Accept-side limits for the HTTP server, so that idle or slow clients cannot take the file descriptors that SIP
and RTP need (issue 13: ~1100 idle connections took the process to its fd limit and new INVITEs got 500; 400
slow-header clients were still held after 45 s).

aiohttp's own keep-alive timer (`keepalive_timeout`, our `http_idle_timeout`) closes a connection that has not
delivered a complete request head since it opened or since its last response, so it already bounds idle
keep-alive connections and slow headers on a reused connection. It offers no connection caps and no separate,
shorter limit for the first request head, so this module wraps aiohttp's protocol factory:

* a connection beyond `max_connections` in all, or `max_per_ip` from one address, gets a one-line
  `503 Service Unavailable` + `Retry-After` and is closed at once (counted, logged at most every 10 s);
* a new connection must deliver its first request head (up to the blank line) within `header_timeout` seconds or
  it is closed (slowloris);
* the total cap is also kept below the process's file-descriptor limit minus what live calls need (RTP sockets,
  engine connections, SIP, the store; but at least a quarter of the limit), so a saturated HTTP side cannot
  starve SIP/RTP.

`raise_fd_limit()` lifts RLIMIT_NOFILE to its hard limit at start (Linux soft limits are often 1024).
"""
from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

log = logging.getLogger("gateway.http")

REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\n"
           b"Content-Type: text/plain\r\nContent-Length: 25\r\n\r\ntoo many HTTP connections")
LOG_EVERY_S = 10.0
FDS_PER_CALL = 2          # an RTP socket, plus headroom for a media websocket or an engine connection
FDS_RESERVED = 256        # SIP sockets, the store, log files, DNS, outgoing webhooks


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("raised the open-file limit", extra={"from": soft, "to": target})
            soft = target
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit", extra={"limit": soft, "error": str(e)})
    return soft


def fd_budget(fd_limit: int, max_calls: int) -> int:
    """HTTP connections the fd limit leaves once `max_calls` live calls and the rest of the process are served;
    never less than a quarter of the limit (a websocket carrier's calls are HTTP connections themselves). When the
    limit cannot serve `max_calls` at all, that is logged: lower --max-calls or raise the hard limit."""
    need = FDS_PER_CALL * max_calls + FDS_RESERVED
    if fd_limit < need + fd_limit // 4:
        log.warning("the open-file limit is low for --max-calls", extra={"limit": fd_limit, "max_calls": max_calls,
                                                                        "needed": need + fd_limit // 4})
    return max(fd_limit // 4, fd_limit - need)


class ConnectionGuard:
    """Counts HTTP connections per address and in all, and wraps each aiohttp protocol with the limits above."""

    def __init__(self, *, max_connections: int, max_per_ip: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.header_timeout = header_timeout
        self.open = 0
        self.per_ip: Counter[str] = Counter()
        self.refused = 0
        self.header_timeouts = 0
        self._last_log = 0.0

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory to give `loop.create_server` instead of aiohttp's `runner.server`."""
        return lambda: _GuardedProtocol(self, inner)

    def admit(self, ip: str) -> bool:
        if self.open >= self.max_connections or self.per_ip[ip] >= self.max_per_ip:
            self.refused += 1
            now = time.monotonic()
            if now - self._last_log >= LOG_EVERY_S:
                self._last_log = now
                log.warning("HTTP connection refused: connection cap reached",
                            extra={"source_ip": ip, "from_ip": self.per_ip[ip], "open": self.open,
                                   "max_connections": self.max_connections, "max_per_ip": self.max_per_ip,
                                   "refused_total": self.refused})
            return False
        self.open += 1
        self.per_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.open -= 1
        left = self.per_ip[ip] - 1
        if left > 0:
            self.per_ip[ip] = left
        else:
            del self.per_ip[ip]  # never keep an entry per address ever seen

    def timed_out(self, ip: str) -> None:
        self.header_timeouts += 1
        log.info("HTTP connection closed: no request head in time", extra={"source_ip": ip,
                                                                           "timeout": self.header_timeout})


class _GuardedProtocol(asyncio.Protocol):
    """Delegates to aiohttp's RequestHandler once admitted; watches for the end of the first request head."""

    __slots__ = ("guard", "inner", "ip", "transport", "timer", "tail")

    def __init__(self, guard: ConnectionGuard, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.inner: Any = make_inner
        self.ip = ""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if isinstance(peer, tuple) else str(peer or "")
        if not self.guard.admit(self.ip):
            self.inner = None
            cast(asyncio.Transport, transport).write(REFUSAL)   # a server connection: a stream transport
            transport.close()
            return
        self.transport = cast(asyncio.Transport, transport)
        self.inner = self.inner()
        self.timer = asyncio.get_running_loop().call_later(self.guard.header_timeout, self._header_timeout)
        self.inner.connection_made(transport)

    def _header_timeout(self) -> None:
        self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.guard.timed_out(self.ip)
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if self.timer is not None:
            seen = self.tail + data
            if b"\r\n\r\n" in seen or b"\n\n" in seen:
                self.timer.cancel()
                self.timer = None
                self.tail = b""
            else:
                self.tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.inner is None:
            return
        self.guard.release(self.ip)
        inner, self.inner, self.transport = self.inner, None, None
        inner.connection_lost(exc)


class GuardedSite(web.BaseSite):
    """`web.TCPSite` with the ConnectionGuard in front of aiohttp's protocol."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, *,
                 backlog: int = 1024, reuse_port: bool | None = None) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self.guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        # start() made it with loop.create_server: an asyncio.Server (or uvloop's, alike)
        return int(cast(asyncio.Server, self._server).sockets[0].getsockname()[1])

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.factory(server), self._host, self._port, backlog=self._backlog, reuse_address=True,
            reuse_port=self._reuse_port)
