"""RTP port allocation and the one 20 ms clock shared by every session of the process.

The clock runs only while a session is open: ticking 50 times a second with no call up woke every idle worker of
`serve --workers N` (and every worker between calls) for nothing."""
from __future__ import annotations

import asyncio
import logging
import socket
from functools import partial

from .session import RtpSession


class RtcpPort(asyncio.DatagramProtocol):
    """The RTCP socket of one session (its RTP port + 1, RFC 3550 §11): hands every datagram to the session."""

    def __init__(self, session: RtpSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.session.rtcp_received(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: the peer has no RTCP socket
        log.debug("rtcp socket error", extra={"port": self.session.local_port + 1, "error": str(exc)})

log = logging.getLogger("gateway.rtp")

class NoFreePort(RuntimeError):
    """Every RTP port pair of the range is in use (or held by other programs): the gateway is full for media."""


TICK = 0.020
MAX_CATCH_UP = 5  # after a stall, replay at most this many ticks at once, then re-anchor the clock


class RtpEngine:
    def __init__(self, bind_ip: str = "0.0.0.0", port_min: int = 20000, port_max: int = 30000,
                 advertised_ip: str = "") -> None:
        if port_min > port_max or port_min < 1024 or port_max > 65534:
            raise ValueError(f"bad RTP port range {port_min}-{port_max}")
        self.bind_ip = bind_ip
        self.port_min = port_min + (port_min % 2)  # RTP uses even ports (RFC 3550 §11)
        self.port_max = port_max
        self.advertised_ip = advertised_ip or ("127.0.0.1" if bind_ip in ("0.0.0.0", "") else bind_ip)
        self.sessions: dict[int, RtpSession] = {}
        self._order: tuple[RtpSession, ...] = ()
        self._cursor = self.port_min
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0
        self._running = False  # between start() and stop(): the clock ticks whenever a session is open
        self.now = 0.0        # loop time of the current tick callback (sessions read it instead of the clock)
        self.ticks = 0
        self.late_ticks = 0   # ticks that ran more than one period late (stalls)
        self.skipped_ticks = 0
        self._closed_totals: dict[str, float] = {}

    def loop_time(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._arm()

    @property
    def clock_running(self) -> bool:
        """Is the 20 ms clock scheduled (started, and a session open or closed since its last tick)?"""
        return self._handle is not None

    def _arm(self) -> None:
        """Start the clock if it is stopped and a session is open: its first tick one period from now."""
        loop = self._loop
        if loop is None or not self._running or self._handle is not None or not self._order:
            return
        self.now = loop.time()
        self._next = self.now + TICK
        self._handle = loop.call_at(self._next, self._on_tick)

    async def stop(self) -> None:
        self._running = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for s in list(self.sessions.values()):
            s.close()

    async def open_session(self) -> RtpSession:
        """Bind the next free even port of the range and the odd one above it for RTCP (skipping pairs other
        programs hold)."""
        loop = self._loop or asyncio.get_running_loop()
        span = (self.port_max - self.port_min) // 2 + 1
        for _ in range(span):
            port = self._cursor
            self._cursor = port + 2 if port + 2 <= self.port_max else self.port_min
            if port in self.sessions:
                continue
            rtp_sock = self._bound(port)
            if rtp_sock is None:
                continue
            rtcp_sock = self._bound(port + 1)
            if rtcp_sock is None:
                rtp_sock.close()
                continue
            session = RtpSession(self, port)
            await loop.create_datagram_endpoint(lambda: session, sock=rtp_sock)  # noqa: B023 (called at once)
            rtcp, _ = await loop.create_datagram_endpoint(partial(RtcpPort, session), sock=rtcp_sock)
            session.rtcp_transport = rtcp
            self.sessions[port] = session
            self._order = tuple(self.sessions.values())
            self._arm()
            return session
        raise NoFreePort(f"no free RTP port in {self.port_min}-{self.port_max}")

    def _bound(self, port: int) -> socket.socket | None:
        """A non-blocking UDP socket bound to `port` of the bind address, or None when the port is taken.
        Bound here rather than with create_datagram_endpoint(local_addr=…): uvloop resolves a local_addr with
        getaddrinfo on its thread pool even for a numeric address, a thread hand-off for each of a call's two
        sockets; profiled at 100 calls/s it was 12 % of the worker's samples, plus the pool thread's own CPU."""
        family = socket.AF_INET6 if ":" in self.bind_ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.bind_ip or "0.0.0.0", port))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        return sock

    def release(self, session: RtpSession) -> None:
        if self.sessions.get(session.local_port) is session:
            del self.sessions[session.local_port]
            self._order = tuple(self.sessions.values())
            for k, v in session.stats.items():
                if k != "jitter_ms":
                    self._closed_totals[k] = self._closed_totals.get(k, 0) + v

    def totals(self) -> dict[str, float]:
        """Packet counters over every session since start (closed and live), plus clock health."""
        out = dict(self._closed_totals)
        for s in self._order:
            for k, v in s.stats.items():
                if k != "jitter_ms":
                    out[k] = out.get(k, 0) + v
        out.update(sessions=len(self._order), late_ticks=self.late_ticks, skipped_ticks=self.skipped_ticks)
        return out

    def _on_tick(self) -> None:
        loop = self._loop
        if loop is None:   # scheduled by start() only, which sets the loop first
            return
        now = self.now = loop.time()
        n = 0
        while self._next <= now and n < MAX_CATCH_UP:
            for session in self._order:
                try:
                    session.tick()
                except Exception:
                    log.exception("rtp tick failed", extra={"port": session.local_port})
            self._next += TICK
            self.ticks += 1
            n += 1
        if n > 1:
            self.late_ticks += n - 1
        if self._next <= now:  # stalled longer than the catch-up window: drop the backlog, keep real time
            skipped = int((now - self._next) / TICK) + 1
            self.skipped_ticks += skipped
            self._next += skipped * TICK
        # the last session closed: the clock stops until the next one opens (`_arm`)
        self._handle = loop.call_at(self._next, self._on_tick) if self._order else None
