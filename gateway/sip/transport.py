"""SIP transport: UDP and TCP on one host:port (RFC 3261 §18, RFC 3581 rport, RFC 5626 §3.5.1 CRLF keep-alive).

API::

    t = SipTransport(host="0.0.0.0", port=5060, on_message=fn)   # port 0 -> ephemeral, same number for UDP and TCP
        optional TLS: tls_context=<server ssl.SSLContext>, tls_port=None (port+1, or ephemeral when port is 0),
        tls_client_context=<ssl.SSLContext for outgoing TLS; default: system trust store, hostname checked>
    await t.start();  t.port;  t.tls_port;  t.host;  t.advertised_host (Via/Contact; defaults to host or 127.0.0.1)
    t.on_message = fn(msg: SipRequest | SipResponse, source_addr: (ip, port), conn: Connection)
        called synchronously from the event loop for every well-formed message; `conn.protocol` is "udp" or
        "tcp"; received requests already carry `received`/`rport` on their top Via.
    t.send(msg_or_bytes, addr, protocol="udp"|"tcp"|"tls", conn=None, *, tls=TlsPeer(name, verify)) -> Future[None]
        sends a request (or anything) to addr; TCP/TLS reuse an open connection to addr or open one. A new TLS
        connection checks the peer's certificate chain and that it names `tls.name` (else the address); an open
        one is reused for a checked send only if it was opened with the same check. `TlsPeer(verify=False)` (a
        trunk's switch for self-signed test peers) skips both. The future fails (never raises here) if a
        connection cannot be made, so the transaction layer can report a transport error (§17.1.4); a TLS
        failure is a `TlsError` whose `verdict` says which (see tls.py).
    t.send_response(resp, conn=None) -> asyncio.Future[None]
        routes a response by its top Via (§18.2.2 + RFC 3581): reliable transport -> the connection the request
        came on if still open, else a new connection to received + sent-by port; UDP -> received IP and rport
        port (or the sent-by port).
    t.via(branch, protocol="udp") -> str   a Via value for our own requests (with ;rport)
    t.stats: rx, tx, parse_errors, bad_requests_answered, dropped, handler_errors, internal_errors
    await t.stop()

Malformed requests are answered `400 <reason>` (or 505) on the same path when a top Via could be parsed; anything
else malformed is dropped and counted. No exception from a received byte ever escapes the transport.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from .message import (
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    SipStreamParser,
    Via,
    make_response,
    parse_message,
)
from .tls import TlsError, classify_tls_error

__all__ = ["SipTransport", "Connection", "TcpConnection", "UdpConnection", "TransportError", "TlsPeer"]

log = logging.getLogger("gateway.sip.transport")

Addr = tuple[str, int]
MAX_UDP = 65507
UDP_BUFFER = 2 * 1024 * 1024
TCP_IDLE_TIMEOUT = 600.0  # seconds without traffic before we close a TCP connection we hold
#: RFC 5626 §4.4.1: keep-alive interval of a flow over a connection-oriented transport (95-120 s recommended)
KEEPALIVE_INTERVAL = 110.0


class TransportError(OSError):
    """A message could not be sent (connection refused, unreachable…)."""


@dataclass(frozen=True)
class TlsPeer:
    """Whom a TLS connection we open must prove to be. `name` is checked against the certificate (RFC 5922 §4:
    the domain we were asked to reach, not a name DNS gave us); `verify=False` accepts any certificate, for a
    self-signed test peer only (the connection is still encrypted, but not authenticated)."""

    name: str | None = None
    verify: bool = True


class Connection:
    protocol = "udp"
    remote: Addr | None = None

    def send_bytes(self, data: bytes, addr: Addr) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        return True


class UdpConnection(asyncio.DatagramProtocol, Connection):
    """The single UDP socket; `conn` for every UDP message (the remote is the `source_addr`).

    Signalling before media: each time the event loop reports the socket readable, every datagram waiting in it is
    read and handled (up to `DRAIN_MAX`), not one (asyncio) or 32 (uvloop/libuv) per loop iteration. A worker with
    hundreds of RTP calls runs long loop iterations; measured behind Kamailio (1000 echo calls on 2 workers, the
    box loaded), INVITEs then waited in this socket's queue (up to ~280 datagrams) longer than Kamailio's 2 s
    `FR_TIMER`, which answered the caller 408 while the worker answered the INVITE later, and the INVITEs Kamailio
    retransmits meanwhile filled the queue further."""

    protocol = "udp"
    #: datagrams read at most per readable event beyond the one the loop hands over (~0.1 ms of work each)
    DRAIN_MAX = 256

    def __init__(self, owner: SipTransport, sock: socket.socket | None = None):
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None
        self._sock = sock        # the bound socket itself (the loop's transport hides it behind a proxy)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)   # a datagram endpoint's transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Bursts of INVITEs at hundreds of calls/s overflow the default ~200 KB buffer while the loop is
            # busy; the kernel caps these at net.core.[rw]mem_max, so this is best effort.
            for opt, size in ((socket.SO_RCVBUF, UDP_BUFFER), (socket.SO_SNDBUF, UDP_BUFFER)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
                except OSError:
                    pass

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.owner._on_datagram(data, addr, self)
        sock = self._sock
        if sock is None:
            return
        for _ in range(self.DRAIN_MAX):
            try:
                data, src = sock.recvfrom(MAX_UDP)
            except OSError:     # BlockingIOError: drained (the loop's own next read just finds it empty)
                return
            self.owner._on_datagram(data, (src[0], src[1]), self)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable etc.: nothing to do for UDP; transactions time out.
        log.debug("udp error: %s", exc)

    def send_bytes(self, data: bytes, addr: Addr) -> None:
        if self.transport is None or self.transport.is_closing():
            raise TransportError("UDP socket closed")
        self.transport.sendto(data, addr)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


class TcpConnection(asyncio.Protocol, Connection):
    """One TCP (or TLS) connection, accepted or opened by us; framing by Content-Length."""

    def __init__(self, owner: SipTransport, protocol: str = "tcp"):
        self.owner = owner
        self.protocol = protocol
        self.transport: asyncio.Transport | None = None
        self.remote: Addr | None = None
        self.framer = SipStreamParser()
        self.closed = asyncio.get_running_loop().create_future()
        self.last_activity = 0.0
        #: TLS connections we opened: the peer check they passed (None: accepted from a peer, or plain TCP)
        self.tls_peer: TlsPeer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # a stream connection's transport
        peer = transport.get_extra_info("peername")
        self.remote = (peer[0], peer[1])
        self.last_activity = asyncio.get_running_loop().time()
        self.owner._tcp_conns[(self.protocol, self.remote)] = self

    def data_received(self, data: bytes) -> None:
        self.last_activity = asyncio.get_running_loop().time()
        try:
            pings = self.framer.pings
            frames = self.framer.feed(data)
            if self.framer.pings != pings and self.transport is not None:
                self.transport.write(b"\r\n")  # RFC 5626 §3.5.1 pong
        except SipParseError as e:
            # The stream cannot be resynchronised: drop the connection.
            self.owner.stats["parse_errors"] += 1
            log.info("closing SIP/TCP connection from %s: %s", self.remote, e.reason)
            if self.transport is not None:
                self.transport.close()
            return
        except Exception:  # pragma: no cover - defensive: never let input crash the loop
            self.owner.stats["internal_errors"] += 1
            log.exception("SIP/TCP framing failure from %s", self.remote)
            if self.transport is not None:
                self.transport.close()
            return
        remote = self.remote
        if remote is None:   # (set by connection_made, before any data)
            return
        for frame in frames:
            self.owner._on_packet(frame, remote, self, stream=True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.remote is not None:
            key = (self.protocol, self.remote)
            if self.owner._tcp_conns.get(key) is self:
                del self.owner._tcp_conns[key]
        if not self.closed.done():
            self.closed.set_result(None)

    def send_bytes(self, data: bytes, addr: Addr | None = None) -> None:
        if self.transport is None or self.transport.is_closing():
            raise TransportError(f"TCP connection to {self.remote} closed")
        self.last_activity = asyncio.get_running_loop().time()
        self.transport.write(data)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


def _udp_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to host:port (a numeric address, or a name resolved here at start)."""
    family, _, _, _, addr = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class SipTransport:
    def __init__(self, host: str = "0.0.0.0", port: int = 5060, *,
                 on_message: Callable[[SipMessage, Addr, Connection], None] | None = None,
                 advertised_host: str | None = None, enable_tcp: bool = True,
                 tls_context: ssl.SSLContext | None = None, tls_port: int | None = None,
                 tls_client_context: ssl.SSLContext | None = None):
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.tls_port = tls_port
        self.tls_client_context = tls_client_context
        self._tls_server: asyncio.AbstractServer | None = None
        self._insecure_context: ssl.SSLContext | None = None
        self.port_requested = port != 0
        self.on_message = on_message
        self._advertised = advertised_host
        self.enable_tcp = enable_tcp
        self._udp: UdpConnection | None = None
        self._tcp_server: asyncio.AbstractServer | None = None
        self._tcp_conns: dict[tuple[str, Addr], TcpConnection] = {}
        #: connections being opened, by transport, address and TLS check (a send waits for the one matching it)
        self._connecting: dict[tuple[str, Addr, TlsPeer | None], asyncio.Task[TcpConnection]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.stats = dict(rx=0, tx=0, parse_errors=0, bad_requests_answered=0, dropped=0, handler_errors=0,
                          internal_errors=0)
        #: told ("sent" | "received", status) for every response sent as a message or received (/metrics);
        #: retransmissions of a response already sent go out as bytes and are not counted again
        self.on_response: Callable[[str, int], None] | None = None

    def count_response(self, direction: str, status: int) -> None:
        """Report one response sent (first transmission) or received to `on_response`."""
        if self.on_response is not None:
            self.on_response(direction, status)

    # -- lifecycle
    @property
    def advertised_host(self) -> str:
        if self._advertised:
            return self._advertised
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def udp(self) -> UdpConnection:
        assert self._udp is not None, "transport not started"
        return self._udp

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.port_requested = self.port != 0
        attempts = 20 if self.port == 0 else 1
        last_exc: Exception | None = None
        for _ in range(attempts):
            sock = _udp_socket(self.host, self.port)
            udp_tr, udp = await loop.create_datagram_endpoint(lambda: UdpConnection(self, sock),  # noqa: B023
                                                              sock=sock)
            port = udp_tr.get_extra_info("sockname")[1]
            if not self.enable_tcp:
                break
            try:
                self._tcp_server = await loop.create_server(lambda: TcpConnection(self), self.host, port,
                                                            reuse_address=True)
                break
            except OSError as e:  # the ephemeral UDP port is taken on TCP: try another one
                last_exc = e
                udp_tr.close()
        else:
            raise last_exc or OSError("could not bind SIP transport")
        self._udp = udp
        self.port = port
        if self.tls_context is not None:
            tls_port = self.tls_port if self.tls_port is not None else (port + 1 if self.port_requested else 0)
            self._tls_server = await loop.create_server(lambda: TcpConnection(self, "tls"), self.host, tls_port,
                                                        ssl=self.tls_context, reuse_address=True)
            self.tls_port = self._tls_server.sockets[0].getsockname()[1]
        self._reaper = asyncio.create_task(self._reap_idle())
        log.info("SIP transport listening on %s:%d (udp%s)%s", self.host, self.port,
                 "+tcp" if self.enable_tcp else "", f", tls on {self.tls_port}" if self._tls_server else "")

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for task in list(self._connecting.values()):
            task.cancel()
        if self._tcp_server is not None:
            self._tcp_server.close()
        if self._tls_server is not None:
            self._tls_server.close()
            self._tls_server = None
        for conn in list(self._tcp_conns.values()):
            if conn.transport is not None:
                conn.transport.close()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        if self._tcp_server is not None:
            try:
                await asyncio.wait_for(self._tcp_server.wait_closed(), 2)
            except (TimeoutError, Exception):  # noqa: BLE001 - shutting down anyway
                pass
            self._tcp_server = None
        self._tcp_conns.clear()

    async def _reap_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(60)
            now = loop.time()
            for conn in list(self._tcp_conns.values()):
                if now - conn.last_activity > TCP_IDLE_TIMEOUT and conn.transport is not None:
                    conn.transport.close()

    def via(self, branch: str, protocol: str = "udp") -> str:
        host = self.advertised_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        port = self.tls_port if protocol.lower() == "tls" and self.tls_port else self.port
        return f"SIP/2.0/{protocol.upper()} {host}:{port};branch={branch};rport"

    # -- receiving
    def _on_datagram(self, data: bytes, addr: Addr, conn: UdpConnection) -> None:
        if len(data) < 4 or not data.strip():
            return  # CRLF / STUN-less keep-alives on UDP (RFC 5626 §3.5.1 uses CRLF on streams only)
        self._on_packet(data, (addr[0], addr[1]), conn, stream=False)

    def _on_packet(self, data: bytes, addr: Addr, conn: Connection, *, stream: bool) -> None:
        self.stats["rx"] += 1
        try:
            try:
                msg = parse_message(data, stream=stream)
            except SipParseError as e:
                self.stats["parse_errors"] += 1
                self._answer_malformed(data, e, addr, conn)
                return
            if isinstance(msg, SipRequest):
                self._stamp_via(msg, addr)
            else:
                self.count_response("received", msg.status)
            handler = self.on_message
            if handler is None:
                self.stats["dropped"] += 1
                return
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("SIP transport failure on a message from %s", addr)
            return
        try:
            handler(msg, addr, conn)
        except Exception:
            self.stats["handler_errors"] += 1
            log.exception("SIP message handler failed", extra={"sip_source": f"{addr[0]}:{addr[1]}"})

    @staticmethod
    def _stamp_via(msg: SipRequest, addr: Addr) -> None:
        """RFC 3261 §18.2.1 `received` and RFC 3581 §4 `rport` on the top Via."""
        via = msg.top_via
        has_rport = "rport" in via.params
        if via.host.strip("[]") != addr[0] or has_rport:
            via = Via(via.transport, via.host, via.port, dict(via.params))
            via.params["received"] = addr[0]
            if has_rport:
                via.params["rport"] = str(addr[1])
            msg.set_top_via(via)

    def _answer_malformed(self, data: bytes, err: SipParseError, addr: Addr, conn: Connection) -> None:
        partial = err.partial
        reason = err.reason.replace("\r", " ").replace("\n", " ")[:120]
        if not isinstance(partial, SipRequest) or partial.method == "ACK":
            self.stats["dropped"] += 1
            log.info("dropped malformed SIP message from %s:%d: %s", addr[0], addr[1], reason)
            return
        try:
            _ = partial.top_via  # a response needs somewhere to go
        except SipParseError:
            if err.status != 505:
                self.stats["dropped"] += 1
                log.info("dropped malformed SIP request from %s:%d (no usable Via): %s", addr[0], addr[1], reason)
                return
            # a Via of another SIP version (RFC 4475 badvers): answer 505 where the request came from
        status = err.status
        phrase = ("Bad Request" if status == 400 else "Version Not Supported") + f" ({reason})"
        resp = make_response(partial, status, phrase, headers=[("Warning", f'399 {self.advertised_host} '
                                                                           f'"{reason.replace(chr(34), chr(39))}"')])
        log.info("answered %d to malformed SIP request from %s:%d: %s", status, addr[0], addr[1], reason)
        self.stats["bad_requests_answered"] += 1
        try:
            conn.send_bytes(resp.to_bytes(), addr)
            self.stats["tx"] += 1
        except (OSError, RuntimeError) as e:
            log.debug("could not send 400 to %s: %s", addr, e)

    # -- sending
    def send(self, msg: SipMessage | bytes, addr: Addr, protocol: str = "udp",
             conn: Connection | None = None, *, tls: TlsPeer | None = None) -> asyncio.Future[None]:
        """Send to `addr` over "udp", "tcp" or "tls". Never raises; the returned future carries a TransportError on
        failure. `tls` says what a TLS peer must prove (default: a certificate valid for the address)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        try:
            data = msg if isinstance(msg, (bytes, bytearray)) else msg.to_bytes()
            if isinstance(msg, SipResponse):
                self.count_response("sent", msg.status)
            addr = (addr[0], int(addr[1]))
            protocol = protocol.lower()
            if protocol == "udp":
                if len(data) > MAX_UDP:
                    raise TransportError(f"message of {len(data)} bytes is too large for UDP")
                self.udp.send_bytes(data, addr)
                self.stats["tx"] += 1
                fut.set_result(None)
                return fut
            if protocol not in ("tcp", "tls"):
                raise TransportError(f"unsupported transport {protocol!r}")
            if conn is not None and conn.is_open and conn.protocol == protocol:
                conn.send_bytes(data, addr)
                self.stats["tx"] += 1
                fut.set_result(None)
                return fut
            peer = (tls or TlsPeer(addr[0])) if protocol == "tls" else None
            existing = self._tcp_conns.get((protocol, addr))
            if existing is not None and existing.is_open and self._reusable(existing, peer):
                existing.send_bytes(data)
                self.stats["tx"] += 1
                fut.set_result(None)
                return fut
            self._send_tcp_new(data, addr, fut, protocol, peer)
        except Exception as e:  # noqa: BLE001 - reported through the future
            if not fut.done():
                fut.set_exception(e if isinstance(e, OSError) else TransportError(str(e)))
        fut.add_done_callback(_consume_exception)
        return fut

    @staticmethod
    def _reusable(conn: TcpConnection, peer: TlsPeer | None) -> bool:
        """A checked TLS send may only reuse a connection we opened with the same check; an unchecked send (or
        TCP) may use any open connection to the address, accepted ones included."""
        if peer is None or not peer.verify:
            return True
        return conn.tls_peer == peer

    def ping(self, protocol: str, addr: Addr) -> bool:
        """An RFC 5626 §3.5.1 CRLF keep-alive on our open connection to `addr`: it keeps a registration's flow
        (and any NAT binding in front of it) open, and counts as activity for the idle reaper. False when no
        such connection is open."""
        conn = self.connection(protocol, addr)
        if conn is None:
            return False
        try:
            conn.send_bytes(b"\r\n\r\n")
        except OSError:
            return False
        return True

    def connection(self, protocol: str, addr: Addr) -> TcpConnection | None:
        """The open TCP/TLS connection to `addr`, if any (in-dialog requests reuse the dialog's connection)."""
        conn = self._tcp_conns.get((protocol.lower(), (addr[0], int(addr[1]))))
        return conn if conn is not None and conn.is_open else None

    def _send_tcp_new(self, data: bytes, addr: Addr, fut: asyncio.Future[None], protocol: str = "tcp",
                      peer: TlsPeer | None = None) -> None:
        key = (protocol, addr, peer)
        task = self._connecting.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect(addr, protocol, peer))
            self._connecting[key] = task
            task.add_done_callback(functools.partial(self._connected, key))

        def written(t: asyncio.Task[TcpConnection]) -> None:
            if fut.done():
                return
            if t.cancelled():
                fut.set_exception(TransportError(f"connect to {addr} cancelled"))
                return
            exc = t.exception()
            if exc is not None:
                where = f"{protocol.upper()} connect to {addr[0]}:{addr[1]}"
                fut.set_exception(TlsError(f"{where}: {exc}", exc.verdict) if isinstance(exc, TlsError)
                                  else TransportError(f"{where} failed: {exc}"))
                return
            try:
                t.result().send_bytes(data)
                self.stats["tx"] += 1
                fut.set_result(None)
            except OSError as e:
                fut.set_exception(e)

        task.add_done_callback(written)

    def _connected(self, key: tuple[str, Addr, TlsPeer | None], _task: asyncio.Task[TcpConnection]) -> None:
        self._connecting.pop(key, None)

    def client_context(self, verify: bool = True) -> ssl.SSLContext:
        """The context for TLS connections we open: the system's trust store (plus `tls_client_context` when
        given), hostname checked; or, with verify=False, one that accepts any certificate."""
        if verify:
            if self.tls_client_context is None:
                self.tls_client_context = ssl.create_default_context()
            return self.tls_client_context
        if self._insecure_context is None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._insecure_context = ctx
        return self._insecure_context

    async def _connect(self, addr: Addr, protocol: str = "tcp", peer: TlsPeer | None = None) -> TcpConnection:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET if ":" not in addr[0] else socket.AF_INET6
        if protocol != "tls":
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: TcpConnection(self, protocol), addr[0], addr[1], family=family), 10)
            return conn
        peer = peer or TlsPeer(addr[0])
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: TcpConnection(self, "tls"), addr[0], addr[1], family=family,
                                       ssl=self.client_context(peer.verify),
                                       server_hostname=peer.name or addr[0], ssl_handshake_timeout=10), 12)
        except (ssl.SSLError, ssl.CertificateError) as e:
            raise classify_tls_error(e, peer.name or addr[0]) from None
        conn.tls_peer = peer
        return conn

    def response_destination(self, resp: SipResponse) -> tuple[Addr, str]:
        """Where a response goes by its top Via (§18.2.2, RFC 3581 §4)."""
        via = resp.top_via
        host = via.received or via.host
        if host.startswith("["):
            host = host[1:-1]
        proto = via.transport.lower()
        if proto == "udp":
            return (host, via.rport or via.port or 5060), "udp"
        # Reliable: the request's connection is preferred by send_response(); a new connection goes to
        # received + the sent-by port (rport holds the peer's ephemeral source port there, §18.2.2).
        if proto == "tls":
            return (host, via.port or 5061), "tls"
        return (host, via.port or 5060), "tcp"

    def send_response(self, resp: SipResponse, conn: Connection | None = None) -> asyncio.Future[None]:
        try:
            addr, proto = self.response_destination(resp)
        except SipParseError as e:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_exception(TransportError(f"cannot route response: {e.reason}"))
            fut.add_done_callback(_consume_exception)
            return fut
        if proto != "udp" and conn is not None and conn.protocol == proto and conn.is_open:
            return self.send(resp, addr, proto, conn)
        return self.send(resp, addr, proto)


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    """Mark failures as retrieved: callers that do not await a send must not trigger loop warnings."""
    if not fut.cancelled():
        fut.exception()
