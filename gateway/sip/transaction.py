"""SIP transactions (RFC 3261 §17, with the RFC 6026 "Accepted" states) and CANCEL (§9).

API::

    layer = TransactionLayer(transport, clock=None, t1=0.5, t2=4.0, t4=5.0, trying_delay=0.2,
                             retransmit_2xx=True, max_invite_pending=600)
        installs itself as transport.on_message. Callbacks for the TU / dialog layer (sync or async):
        layer.on_request  = fn(request, server_txn)   every new request except ACK and CANCEL
        layer.on_ack      = fn(ack, source_addr, conn) ACKs for 2xx and ACKs matching no transaction
        layer.on_cancel   = fn(server_txn)             after a CANCEL made us answer 487 to the INVITE
        layer.on_stray_response = fn(resp, source_addr, conn)   responses matching no client transaction and
                                                       2xx retransmissions (re-send your ACK)
        layer.on_ack_timeout = fn(server_txn)          a 2xx to INVITE was never ACKed within 64*T1 (send BYE)

    # client
    resp = await layer.send_request(req, addr, protocol="udp", on_provisional=None)   # final response
        raises TransactionTimeout (Timer B/F: treat as 408) or TransactionTransportError (treat as 503).
        A missing top Via is added (transport.via(new_branch())). The Request-URI/Route are not rewritten.
        addr may hold a host name (resolved here, A/AAAA); for protocol="tls" pass the name so the peer's
        certificate is checked against it, or `tls=TlsPeer(name, verify)` with an address.
    txn = await layer.start_request(req, addr, protocol="udp", on_provisional=None); await txn.final
    await txn.cancel(headers=None) -> CANCEL's final response | None (too late). Waits for a provisional
        response first (§9.1); the INVITE then normally completes with 487.
    layer.send_ack(ack, addr, protocol)   for 2xx ACKs (the dialog builds them, §13.2.2.4); no transaction
    make_ack(invite, response) / make_cancel(invite)   (§17.1.1.3 / §9.1)

    # server: inside on_request
    server_txn.respond(resp) -> bool     (False once a final response was already sent)
    server_txn.request, .source, .conn, .state, .cancelled (asyncio.Event), .to_tag (tag we answered with)

Behaviour: requests are retransmitted on UDP by Timer A (INVITE, doubling without cap) and E (non-INVITE,
doubling up to T2), given up by B/F after 64*T1; non-2xx finals are ACKed by the client transaction and kept for
Timer D (32 s) / K (T4) to absorb retransmissions. Server side: an INVITE gets "100 Trying" if the TU has not
answered within `trying_delay` (§17.2.1), retransmitted requests get the last response again (never a second
TU call), non-2xx finals are retransmitted by Timer G until the ACK or Timer H, then kept for I (T4) / J
(64*T1). A 2xx to INVITE is retransmitted (T1 doubling to T2, §13.3.1.4) until its ACK (or a BYE in that
dialog) arrives, or 64*T1.
Over TCP the retransmission timers are off and D, I, J, K are zero. A TU that never answers cannot leak
transactions: a non-INVITE is dropped after 64*T1, an INVITE gets 480 after `max_invite_pending` seconds.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from .message import Headers, SipMessage, SipParseError, SipRequest, SipResponse, make_response, new_branch, new_tag
from .timers import T1, T2, T4, Clock, LoopClock, TimerHandle
from .transport import SipTransport, TlsPeer

__all__ = [
    "TransactionLayer", "ClientTransaction", "ServerTransaction", "TransactionError", "TransactionTimeout",
    "TransactionTransportError", "make_ack", "make_cancel",
]

log = logging.getLogger("gateway.sip.transaction")

# States (RFC 3261 Figures 5-8, RFC 6026 Figures 3 and 5).
CALLING, TRYING, PROCEEDING, ACCEPTED, COMPLETED, CONFIRMED, TERMINATED = (
    "calling", "trying", "proceeding", "accepted", "completed", "confirmed", "terminated")

MAGIC = "z9hG4bK"


class TransactionError(Exception):
    pass


class TransactionTimeout(TransactionError):
    """Timer B or F fired: no final response (report as 408 Request Timeout)."""


class TransactionTransportError(TransactionError):
    """The transport could not deliver the request (§17.1.4: report as 503 Service Unavailable); `cause` is the
    transport's error (a TlsError names the failed certificate check)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def _call(fn: Callable[..., Any] | None, *args: Any) -> None:
    """Invoke a TU callback that may be sync or async; errors are logged, never propagated into the layer."""
    if fn is None:
        return
    try:
        res = fn(*args)
        if inspect.isawaitable(res):
            task = asyncio.ensure_future(res)
            task.add_done_callback(_log_task_error)
    except Exception:
        log.exception("SIP TU callback %r failed", getattr(fn, "__name__", fn))


def _log_task_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("SIP TU callback failed", exc_info=task.exception())


def make_ack(invite: SipRequest, response: SipResponse) -> SipRequest:
    """ACK for a non-2xx final response, part of the INVITE client transaction (§17.1.1.3)."""
    return _within_invite(invite, "ACK", response.headers["to"])


def make_cancel(invite: SipRequest, headers: list[tuple[str, str]] | None = None) -> SipRequest:
    """CANCEL for a pending INVITE: same Request-URI, Call-ID, From, To, CSeq number and top Via (§9.1)."""
    req = _within_invite(invite, "CANCEL", invite.headers["to"])
    for k, v in headers or ():
        req.headers.add(k, v)
    return req


def _within_invite(invite: SipRequest, method: str, to: str) -> SipRequest:
    """A request of the INVITE's own transaction (ACK to a non-2xx, CANCEL): the INVITE's Request-URI, top Via,
    Route set, From, Call-ID and CSeq number, with `method` and the To given."""
    h = Headers()
    d = h._d
    d["via"] = ("Via", [invite.headers.getlist("via")[0]])
    routes = invite.headers.getlist("route")
    if routes:
        d["route"] = ("Route", routes)
    d["max-forwards"] = ("Max-Forwards", ["70"])
    d["from"] = ("From", [invite.headers["from"]])
    d["to"] = ("To", [to])
    d["call-id"] = ("Call-ID", [invite.call_id])
    d["cseq"] = ("CSeq", [f"{invite.cseq[0]} {method}"])
    return SipRequest(method, invite.uri, h)


# --- client -------------------------------------------------------------------------------------------------

class _TimerSet:
    """The named RFC 3261 timers (A, B, D, E…) of one transaction, on the layer's clock (real or fake)."""

    __slots__ = ()
    # (instance attributes of the transaction classes, declared here for the methods below)
    layer: TransactionLayer
    _timers: dict[str, TimerHandle]

    def _set(self, name: str, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        old = self._timers.get(name)
        if old is not None:
            old.cancel()
        self._timers[name] = self.layer.clock.call_later(delay, fn, *args)

    def _stop(self, *names: str) -> None:
        for n in names:
            h = self._timers.pop(n, None)
            if h is not None:
                h.cancel()

    def _stop_all(self) -> None:
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()


class ClientTransaction(_TimerSet):
    __slots__ = ("layer", "request", "addr", "protocol", "conn", "on_provisional", "is_invite", "reliable",
                 "state", "key", "final", "last_response", "_data", "_timers", "_provisional_seen",
                 "_cancel_txn", "_ack_data", "_got_response", "tls")

    def __init__(self, layer: TransactionLayer, request: SipRequest, addr: tuple[str, int], protocol: str,
                 on_provisional: Callable[[SipResponse], Any] | None, conn: Any = None) -> None:
        self.layer = layer
        self.request = request
        self.addr = addr
        self.protocol = protocol.lower()
        self.conn = conn
        self.on_provisional = on_provisional
        self.is_invite = request.method == "INVITE"
        self.reliable = self.protocol != "udp"
        self.state = CALLING if self.is_invite else TRYING
        self.key = (request.branch, request.method)
        self.final: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self.last_response: SipResponse | None = None
        self._data = request.to_bytes()
        self._timers: dict[str, Any] = {}
        self._provisional_seen = False
        self._got_response: asyncio.Event | None = None
        self._cancel_txn: ClientTransaction | None = None
        self._ack_data: bytes | None = None
        self.tls: TlsPeer | None = None  # TLS: what the peer's certificate must prove

    # -- timers
    def start(self) -> None:
        L = self.layer
        self._send(self._data)
        if self.state == TERMINATED:  # the transport refused at once
            return
        if self.is_invite:
            if not self.reliable:
                self._set("A", L.t1, self._timer_a, L.t1)
            self._set("B", 64 * L.t1, self._timer_b)
        else:
            if not self.reliable:
                self._set("E", L.t1, self._timer_e, L.t1)
            self._set("F", 64 * L.t1, self._timer_f)

    def _send(self, data: bytes) -> None:
        if self.tls is not None:
            fut = self.layer.transport.send(data, self.addr, self.protocol, self.conn, tls=self.tls)
        else:
            fut = self.layer.transport.send(data, self.addr, self.protocol, self.conn)
        if fut.done():
            exc = fut.exception()
            if exc is not None:
                self._transport_error(exc)
        else:
            def sent(f: asyncio.Future[None]) -> None:
                exc = f.exception()
                if exc is not None:
                    self._transport_error(exc)
            fut.add_done_callback(sent)

    def _transport_error(self, exc: BaseException) -> None:
        if self.state in (CALLING, TRYING, PROCEEDING):
            self._fail(TransactionTransportError(str(exc), exc))

    def _timer_a(self, interval: float) -> None:
        if self.state != CALLING:
            return
        self.layer.stats["retransmissions"] += 1
        self._send(self._data)
        self._set("A", 2 * interval, self._timer_a, 2 * interval)

    def _timer_b(self) -> None:
        if self.state == CALLING:
            self._fail(TransactionTimeout(f"no response to {self.request.method} within {64 * self.layer.t1:g}s "
                                          "(Timer B)"))

    def _timer_e(self, interval: float) -> None:
        if self.state not in (TRYING, PROCEEDING):
            return
        self.layer.stats["retransmissions"] += 1
        self._send(self._data)
        nxt = min(2 * interval, self.layer.t2) if self.state == TRYING else self.layer.t2
        self._set("E", nxt, self._timer_e, nxt)

    def _timer_f(self) -> None:
        if self.state in (TRYING, PROCEEDING):
            self._fail(TransactionTimeout(f"no final response to {self.request.method} within "
                                          f"{64 * self.layer.t1:g}s (Timer F)"))

    def _cancel_guard(self) -> None:
        # §9.1: no final response 64*T1 after our CANCEL: give the INVITE up.
        if self.state in (CALLING, PROCEEDING):
            self._fail(TransactionTimeout("no final response to the cancelled INVITE (64*T1 after CANCEL)"))

    def _fail(self, exc: TransactionError) -> None:
        self.layer.stats["timeouts" if isinstance(exc, TransactionTimeout) else "transport_errors"] += 1
        if not self.final.done():
            self.final.set_exception(exc)
            self.final.exception()  # retrieved by the awaiting TU; avoid "never retrieved" noise otherwise
        self._notify_response()
        self.terminate()

    def terminate(self) -> None:
        self.state = TERMINATED
        self._stop_all()
        if self.layer._clients.get(self.key) is self:
            del self.layer._clients[self.key]

    def _notify_response(self) -> None:
        if self._got_response is not None:
            self._got_response.set()

    # -- responses
    def receive(self, resp: SipResponse, addr: tuple[str, int], conn: Any) -> None:
        code = resp.status
        st = self.state
        L = self.layer
        if code < 200:
            if st in (CALLING, TRYING, PROCEEDING):
                self.state = PROCEEDING
                self._provisional_seen = True
                self.last_response = resp
                if self.is_invite:
                    self._stop("A", "B")
                self._notify_response()
                _call(self.on_provisional, resp)
            return
        if self.is_invite:
            if code < 300:
                if st in (CALLING, PROCEEDING):
                    self.state = ACCEPTED
                    self.last_response = resp
                    self._stop("A", "B", "cancel_guard")
                    self._set("M", 64 * L.t1, self.terminate)
                    self.final.set_result(resp)
                    self._notify_response()
                elif st == ACCEPTED:
                    _call(L.on_stray_response, resp, addr, conn)  # 2xx retransmission/fork: TU re-ACKs
                return
            if st in (CALLING, PROCEEDING):
                self.state = COMPLETED
                self.last_response = resp
                self._stop("A", "B", "cancel_guard")
                self._ack_data = make_ack(self.request, resp).to_bytes()
                self._send(self._ack_data)
                self.final.set_result(resp)
                self._notify_response()
                if self.reliable:
                    self.terminate()
                else:
                    self._set("D", 32.0, self.terminate)
            elif st == COMPLETED and self._ack_data is not None:
                L.stats["retransmissions_absorbed"] += 1
                self._send(self._ack_data)
            return
        # non-INVITE final
        if st in (TRYING, PROCEEDING):
            self.state = COMPLETED
            self.last_response = resp
            self._stop("E", "F")
            self.final.set_result(resp)
            if self.reliable:
                self.terminate()
            else:
                self._set("K", L.t4, self.terminate)
        else:
            L.stats["retransmissions_absorbed"] += 1

    # -- CANCEL
    async def cancel(self, headers: list[tuple[str, str]] | None = None) -> SipResponse | None:
        if not self.is_invite:
            raise TransactionError("only an INVITE can be cancelled")
        if not self._provisional_seen and self.state == CALLING:
            self._got_response = self._got_response or asyncio.Event()
            await self._got_response.wait()
        if self.state != PROCEEDING:
            return None  # a final response won the race: the TU must BYE a 2xx instead
        cancel = make_cancel(self.request, headers)
        self._set("cancel_guard", 64 * self.layer.t1, self._cancel_guard)
        txn = await self.layer.start_request(cancel, self.addr, self.protocol, conn=self.conn, tls=self.tls)
        self._cancel_txn = txn
        try:
            return await txn.final
        except TransactionError:
            return None


# --- server -------------------------------------------------------------------------------------------------

class ServerTransaction(_TimerSet):
    __slots__ = ("layer", "request", "source", "origin", "conn", "is_invite", "reliable", "state", "key",
                 "last_response", "_last_data", "_dest", "_timers", "_cancelled", "to_tag", "dialog_key",
                 "__weakref__")

    def __init__(self, layer: TransactionLayer, request: SipRequest, source: tuple[str, int], conn: Any,
                 key: tuple[Any, ...], origin: tuple[str, int] | None = None) -> None:
        self.layer = layer
        self.request = request
        #: where the request came from (responses go back there); `origin`: who sent it first, when a trusted
        #: proxy forwarded it (gateway/sip/origin.py), else the same address
        self.source = source
        self.origin = origin or source
        self.conn = conn
        self.is_invite = request.method == "INVITE"
        self.reliable = getattr(conn, "protocol", "udp") != "udp"
        self.state = PROCEEDING if self.is_invite else TRYING
        self.key = key
        self.last_response: SipResponse | None = None
        self._last_data: bytes | None = None
        self._dest: tuple[tuple[str, int], str] | None = None
        self._timers: dict[str, Any] = {}
        self._cancelled: asyncio.Event | None = None
        self.to_tag: str | None = None
        self.dialog_key: tuple[Any, ...] | None = None

    @property
    def cancelled(self) -> asyncio.Event:
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
        return self._cancelled

    @property
    def is_final(self) -> bool:
        return self.state not in (TRYING, PROCEEDING)

    def _transmit(self) -> None:
        if self._last_data is None or self._dest is None:
            return
        addr, proto = self._dest
        conn = self.conn if proto != "udp" else None
        self.layer.transport.send(self._last_data, addr, proto, conn)

    def respond(self, resp: SipResponse) -> bool:
        """Send a response through this transaction; returns False if it can no longer be sent."""
        if self.state not in (TRYING, PROCEEDING):
            log.debug("ignoring %d for %s: transaction already %s", resp.status, self.request.method, self.state)
            return False
        L = self.layer
        self._stop("trying")
        if resp.status >= 200:
            self._stop("guard")
        if self.to_tag is None:
            try:
                self.to_tag = resp.to_tag
            except SipParseError:
                pass
        try:
            self._dest = L.transport.response_destination(resp)
        except SipParseError as e:
            log.warning("cannot route response %d: %s", resp.status, e.reason)
            return False
        self.last_response = resp
        self._last_data = resp.to_bytes()
        L.transport.count_response("sent", resp.status)
        self._transmit()
        code = resp.status
        if code < 200:
            self.state = PROCEEDING
            return True
        if self.is_invite:
            if code < 300:
                self.state = ACCEPTED
                self._set("L", 64 * L.t1, self._timer_l)
                if L.retransmit_2xx:
                    self._set("2xx", L.t1, self._retransmit_2xx, L.t1)
                    self.dialog_key = (self.request.call_id, self.request.cseq[0], self.request.from_tag)
                    L._awaiting_ack[self.dialog_key] = self
            else:
                self.state = COMPLETED
                if not self.reliable:
                    self._set("G", L.t1, self._timer_g, L.t1)
                self._set("H", 64 * L.t1, self._timer_h)
        else:
            self.state = COMPLETED
            if self.reliable:
                self.terminate()
            else:
                self._set("J", 64 * L.t1, self.terminate)
        return True

    def _guard(self) -> None:
        if self.is_final:
            return
        log.error("no final response from the application to %s %s; giving the transaction up",
                  self.request.method, self.request.call_id)
        self.layer.stats["tu_errors"] += 1
        if self.is_invite:
            self.respond(make_response(self.request, 480, "Temporarily Unavailable", to_tag=self.to_tag or new_tag()))
        else:
            self.terminate()

    def _send_trying(self) -> None:
        if self.state == PROCEEDING and self.last_response is None:
            self.respond(make_response(self.request, 100))

    def _timer_g(self, interval: float) -> None:
        if self.state != COMPLETED:
            return
        self.layer.stats["retransmissions"] += 1
        self._transmit()
        nxt = min(2 * interval, self.layer.t2)
        self._set("G", nxt, self._timer_g, nxt)

    def _timer_h(self) -> None:
        if self.state == COMPLETED:
            log.info("no ACK for %d to INVITE %s (Timer H)", self.last_response.status if self.last_response else 0,
                     self.request.call_id)
            self.layer.stats["timeouts"] += 1
            self.terminate()

    def _retransmit_2xx(self, interval: float) -> None:
        if self.state != ACCEPTED or self.dialog_key is None:
            return
        self.layer.stats["retransmissions"] += 1
        self._transmit()
        nxt = min(2 * interval, self.layer.t2)
        self._set("2xx", nxt, self._retransmit_2xx, nxt)

    def _timer_l(self) -> None:
        if self.dialog_key is not None and self.layer._awaiting_ack.get(self.dialog_key) is self:
            # 64*T1 and still no ACK for our 2xx (§13.3.1.4): the TU should end the dialog with BYE.
            self.layer.stats["timeouts"] += 1
            _call(self.layer.on_ack_timeout, self)
        self.terminate()

    def ack_for_2xx(self) -> None:
        self._stop("2xx")
        if self.dialog_key is not None and self.layer._awaiting_ack.get(self.dialog_key) is self:
            del self.layer._awaiting_ack[self.dialog_key]

    def receive_retransmission(self, req: SipRequest) -> None:
        L = self.layer
        if req.method == "ACK":
            if self.state == COMPLETED:
                self.state = CONFIRMED
                self._stop("G", "H")
                if self.reliable:
                    self.terminate()
                else:
                    self._set("I", L.t4, self.terminate)
                return
            if self.state == ACCEPTED:  # an ACK for our 2xx that reused the INVITE branch
                self.ack_for_2xx()
                _call(L.on_ack, req, self.source, self.conn)
                return
            L.stats["retransmissions_absorbed"] += 1
            return
        L.stats["retransmissions_absorbed"] += 1
        if self.is_invite and self.state == PROCEEDING and self._last_data is None and L.trying_delay is not None:
            self._send_trying()  # the client is retransmitting already: stop its Timer A now
            return
        if self.state in (PROCEEDING, COMPLETED) and self._last_data is not None:
            self._transmit()  # the last provisional (Proceeding) or the final response (Completed) again

    def terminate(self) -> None:
        self.state = TERMINATED
        self._stop_all()
        L = self.layer
        if L._servers.get(self.key) is self:
            del L._servers[self.key]
        if self.dialog_key is not None and L._awaiting_ack.get(self.dialog_key) is self:
            del L._awaiting_ack[self.dialog_key]


# --- layer --------------------------------------------------------------------------------------------------

class TransactionLayer:
    def __init__(self, transport: SipTransport, *, clock: Clock | None = None, t1: float = T1,
                 t2: float = T2, t4: float = T4, trying_delay: float | None = 0.2, retransmit_2xx: bool = True,
                 max_invite_pending: float = 600.0) -> None:
        self.transport = transport
        self.clock: Clock = clock or LoopClock()
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.trying_delay = trying_delay
        self.retransmit_2xx = retransmit_2xx
        self.max_invite_pending = max_invite_pending
        self.on_request: Callable[..., Any] | None = None
        self.on_ack: Callable[..., Any] | None = None
        self.on_cancel: Callable[..., Any] | None = None
        self.on_stray_response: Callable[..., Any] | None = None
        self.on_ack_timeout: Callable[..., Any] | None = None
        #: source gate for new out-of-dialog requests (a banned password guesser): fn(source ip) → None to let the
        #: request through, a status (403) to answer it with, or 0 to drop it without a word
        self.refuse_source: Callable[[str], int | None] | None = None
        #: the original sender of a request a trusted proxy forwarded: fn(request, peer address) → address
        #: (gateway/sip/origin.py); None: every request's origin is the address it came from
        self.origin_of: Callable[[SipRequest, tuple[str, int]], tuple[str, int]] | None = None
        self._clients: dict[tuple[Any, ...], ClientTransaction] = {}
        self._servers: dict[tuple[Any, ...], ServerTransaction] = {}
        self._awaiting_ack: dict[tuple[Any, ...], ServerTransaction] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = dict(client_transactions=0, server_transactions=0, retransmissions=0,
                          retransmissions_absorbed=0, timeouts=0, transport_errors=0, tu_errors=0)
        if transport is not None:
            transport.on_message = self.receive

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    # -- client side
    async def start_request(self, request: SipRequest, addr: tuple[str, int],
                            protocol: str | Callable[[SipResponse], Any] = "udp", *,
                            on_provisional: Callable[[SipResponse], Any] | None = None,
                            conn: Any = None, tls: TlsPeer | None = None) -> ClientTransaction:
        if callable(protocol):  # the SIP_LAYERS.md form send_request(req, addr, on_provisional)
            on_provisional = protocol
            protocol = "udp"
        if request.method == "ACK":
            raise TransactionError("ACK is not sent in a transaction: use send_ack()")
        if "via" not in request.headers:
            request.headers.prepend("Via", self.transport.via(new_branch(), protocol))
        host = addr[0]
        addr = (await self._resolve(host), int(addr[1]))
        txn = ClientTransaction(self, request, addr, protocol, on_provisional, conn)
        if protocol.lower() == "tls":
            # verify the certificate against the name we were asked to reach (RFC 5922 §4), unless told whom
            txn.tls = tls or (TlsPeer(host.strip("[]")) if host.strip("[]") != addr[0] else None)
        if not (request.branch or "").startswith(MAGIC):
            raise TransactionError("client requests need an RFC 3261 branch (z9hG4bK…)")
        if txn.key in self._clients:
            raise TransactionError(f"branch {request.branch} already in use")
        self._clients[txn.key] = txn
        self.stats["client_transactions"] += 1
        txn.start()
        return txn

    async def send_request(self, request: SipRequest, addr: tuple[str, int],
                           protocol: str | Callable[[SipResponse], Any] = "udp",
                           on_provisional: Callable[[SipResponse], Any] | None = None, *,
                           conn: Any = None, tls: TlsPeer | None = None) -> SipResponse:
        txn = await self.start_request(request, addr, protocol, on_provisional=on_provisional, conn=conn, tls=tls)
        return await txn.final

    def send_ack(self, ack: SipRequest, addr: tuple[str, int], protocol: str = "udp",
                 conn: Any = None, *, tls: TlsPeer | None = None) -> asyncio.Future[None]:
        if tls is not None:
            return self.transport.send(ack, addr, protocol, conn, tls=tls)
        return self.transport.send(ack, addr, protocol, conn)

    @staticmethod
    async def _resolve(host: str) -> str:
        h = host.strip("[]")
        if h.replace(".", "").isdigit() or ":" in h:
            return h
        infos = await asyncio.get_running_loop().getaddrinfo(h, None, type=2)  # SOCK_DGRAM
        if not infos:
            raise TransactionTransportError(f"cannot resolve {host}")
        return str(infos[0][4][0])

    # -- receiving
    def receive(self, msg: SipMessage, addr: tuple[str, int], conn: Any) -> None:
        """transport.on_message: route a message to its transaction, or to the TU."""
        if isinstance(msg, SipResponse):
            try:
                key = (msg.branch, msg.cseq[1])
            except SipParseError:
                return
            txn = self._clients.get(key)
            if txn is not None:
                txn.receive(msg, addr, conn)
            else:
                _call(self.on_stray_response, msg, addr, conn)
            return
        if not isinstance(msg, SipRequest):
            return
        req = msg
        key = self._server_key(req)
        known = self._servers.get(key)
        if known is not None:
            known.receive_retransmission(req)
            return
        method = req.method
        if method == "ACK":
            pending = self._awaiting_ack.get((req.call_id, req.cseq[0], req.from_tag))
            if pending is not None:
                pending.ack_for_2xx()
            _call(self.on_ack, req, addr, conn)
            return
        if method == "BYE" and self._awaiting_ack:
            # A BYE in the dialog proves the peer got our 2xx even if its ACK was lost: stop re-sending it.
            cid, ftag = req.call_id, req.from_tag
            for k, pending in list(self._awaiting_ack.items()):
                if k[0] == cid and k[2] == ftag:
                    pending.ack_for_2xx()
        origin = self.origin_of(req, addr) if self.origin_of is not None else addr
        refusal = self.refuse_source(origin[0]) if self.refuse_source is not None and not req.to_tag else None
        if refusal == 0:
            return
        server = ServerTransaction(self, req, addr, conn, key, origin)
        self._servers[key] = server
        self.stats["server_transactions"] += 1
        if refusal is not None:
            server.respond(make_response(req, refusal, to_tag=new_tag()))
            return
        if method == "CANCEL":
            self._handle_cancel(server)
            return
        # Safety net against a TU that never answers: the client stops caring after 64*T1 (non-INVITE); an
        # INVITE may ring for minutes, but not forever.
        server._set("guard", self.max_invite_pending if server.is_invite else 64 * self.t1, server._guard)
        if server.is_invite and self.trying_delay is not None:
            if self.trying_delay <= 0:
                server._send_trying()
            else:
                server._set("trying", self.trying_delay, server._send_trying)
        if self.on_request is None:
            server.respond(make_response(req, 503, "No Request Handler"))
            return
        task = asyncio.ensure_future(self._run_tu(server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_tu(self, txn: ServerTransaction) -> None:
        try:
            handler = self.on_request
            if handler is None:   # (receive() answered 503 already)
                return
            res = handler(txn.request, txn)
            if inspect.isawaitable(res):
                await res
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats["tu_errors"] += 1
            log.exception("SIP request handler failed for %s %s", txn.request.method, txn.request.call_id)
            if not txn.is_final:
                txn.respond(make_response(txn.request, 500, "Server Internal Error", to_tag=new_tag()))

    @staticmethod
    def _server_key(req: SipRequest) -> tuple[Any, ...]:
        via = req.top_via
        method = "INVITE" if req.method == "ACK" else req.method
        branch = via.branch
        if branch and branch.startswith(MAGIC):
            return (branch, via.host, via.port, method)
        # RFC 2543 peers (§17.2.3): match on the request's identity instead of the branch.
        return ("rfc2543", req.uri, req.call_id, req.cseq[0], req.from_tag, via.host, via.port, method)

    def _handle_cancel(self, cancel_txn: ServerTransaction) -> None:
        """§9.2: 200 to the CANCEL, 487 to the INVITE if it is still pending, 481 if there is no such INVITE."""
        req = cancel_txn.request
        inv = self._servers.get(cancel_txn.key[:-1] + ("INVITE",))  # same branch/identity, method INVITE
        if inv is None:
            cancel_txn.respond(make_response(req, 481, to_tag=new_tag()))
            return
        tag = inv.to_tag or new_tag()
        cancel_txn.respond(make_response(req, 200, to_tag=tag))
        if not inv.is_final:
            inv.to_tag = tag
            inv.respond(make_response(inv.request, 487, to_tag=tag))
            inv.cancelled.set()
            _call(self.on_cancel, inv)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for txn in list(self._clients.values()):
            txn._fail(TransactionTransportError("transaction layer closed"))
        for s in list(self._servers.values()):
            s.terminate()
