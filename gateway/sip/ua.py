"""The SIP user-agent core (RFC 3261 §8, §12-§15): what sits between transactions and calls.

* Incoming requests are routed to their dialog (481 when none, 500 for an out-of-order CSeq) or, outside a
  dialog, to the INVITE handler (`on_invite`), the OPTIONS answer (200 with Allow), or 405. While `draining()`
  says so, a new INVITE and an out-of-dialog OPTIONS get 503 + Retry-After (a proxy such as Kamailio's
  dispatcher then stops sending new calls here); requests inside live dialogs are served as usual.
* An INVITE we answer (`IncomingInvite`): provisional responses, then a 2xx that the UA core retransmits until
  the ACK arrives (§13.3.1.4; BYE when it never does), or an error; CANCEL ends it with 487.
* An INVITE we send (`OutgoingInvite`): digest on 401/407 (§22.2), provisional callbacks (180, 183 + SDP),
  CANCEL on ring timeout or hangup (sent only after a provisional, §9.1), ACK for the 2xx sent by the core
  (re-sent for every 2xx retransmission), ACK+BYE for a 2xx that loses a race with our CANCEL.
* Established calls (`SipSession`): BYE both ways with a Reason header (RFC 3326), re-INVITE/UPDATE offers
  (hold: `a=sendonly`/`inactive`), session-timer refreshes answered and watched (RFC 4028), REFER with NOTIFY
  sipfrag progress (RFC 3515), SIP INFO DTMF (application/dtmf-relay), in-dialog OPTIONS.
"""
from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import digest
from .dialog import Dialog
from .locate import LocateError, Locator, is_literal
from .message import NameAddr, SipRequest, SipResponse, SipUri, make_response, new_branch, new_call_id, new_tag
from .replaces import Replaces, ReplacesError
from .tls import TlsError
from .transaction import TransactionError, TransactionLayer, TransactionTimeout
from .transport import SipTransport, TlsPeer

_T = TypeVar("_T")
log = logging.getLogger("gateway.sip.ua")

T1 = 0.5
T2 = 4.0
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, REFER, NOTIFY, INFO"
#: the option tags (RFC 3261 §19.2) we implement: session timers (RFC 4028) and Replaces (RFC 3891: an INVITE
#: naming one of our dialogs takes its place; our attended transfers send it). Not `100rel` (RFC 3262):
#: advertising one we do not do invites a peer to depend on it.
EXTENSIONS = frozenset({"replaces", "timer"})
SUPPORTED = ", ".join(sorted(EXTENSIONS))
URI_SCHEMES = frozenset({"sip", "sips", "tel"})
MIN_SE = 90                       # RFC 4028 §4: the smallest Session-Expires we accept
USER_AGENT = "telephony-gateway"

Dest = tuple[str, int, str]       # host, port, transport ("udp" | "tcp" | "tls")


@dataclass(frozen=True)
class Credentials:
    """Digest credentials for a trunk; `auth_username` is a separate authorization id when the provider has one."""

    username: str
    password: str = field(repr=False)
    auth_username: str | None = None

    @property
    def auth_user(self) -> str:
        return self.auth_username or self.username


class RequestFailed(Exception):
    """A request got no usable answer (transaction timeout, transport error); `tls_verdict` says which TLS
    check failed when that was the reason (gateway/sip/tls.py)."""

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out
        self.tls_verdict: str | None = None


def tls_verdict_of(exc: BaseException) -> str | None:
    """The TLS verdict behind a transaction's transport error, if that is what it was."""
    cause = getattr(exc, "cause", None) or exc.__cause__
    for e in (exc, cause):
        if isinstance(e, TlsError):
            return e.verdict
    return None


def reason_header(status: int | None = None, text: str = "", *, q850: int | None = None) -> str:
    """RFC 3326 Reason header value: `SIP;cause=486;text="Busy Here"` or `Q.850;cause=16;text=…`."""
    safe = text.replace('"', "'")[:120]
    if q850 is not None:
        return f'Q.850;cause={q850};text="{safe}"'
    return f'SIP;cause={status or 200};text="{safe}"'


def parse_reason(value: str | None) -> str:
    """A readable hangup reason from a Reason header (`486 Busy Here`, `Q.850 16 Normal call clearing`)."""
    if not value:
        return ""
    m = re.match(r'\s*([A-Za-z0-9.]+)\s*;(.*)$', value)
    if not m:
        return value.strip()[:120]
    params = dict(re.findall(r'(\w+)\s*=\s*("[^"]*"|[^;]+)', m.group(2)))
    cause = params.get("cause", "").strip()
    text = params.get("text", "").strip().strip('"')
    proto = m.group(1).upper()
    if proto == "SIP":
        return f"{cause} {text}".strip()
    return f"{proto} {cause} {text}".strip()


def _session_expires(msg: SipRequest | SipResponse) -> tuple[int | None, str | None]:
    v = msg.headers.get("Session-Expires")
    if not v:
        return None, None
    m = re.match(r"\s*(\d+)\s*(?:;(.*))?$", v)
    if not m:
        return None, None
    refresher = None
    if m.group(2):
        r = re.search(r"refresher\s*=\s*(uac|uas)", m.group(2), re.I)
        refresher = r.group(1).lower() if r else None
    return int(m.group(1)), refresher


class UserAgent:
    """Routes requests to dialogs and handlers; builds and sends requests with authentication."""

    def __init__(self, transport: SipTransport, layer: TransactionLayer, *, t1: float = T1,
                 user_agent: str = USER_AGENT) -> None:
        self.transport = transport
        self.layer = layer
        self.t1 = getattr(layer, "t1", t1)
        self.user_agent = user_agent
        self.sessions: dict[tuple[str, str, str], SipSession] = {}
        self.invites: dict[str, IncomingInvite] = {}          # by INVITE branch (CANCEL matching)
        self.on_invite: Callable[[IncomingInvite], Awaitable[None]] | None = None
        self.on_register: Callable[[SipRequest, Any], Awaitable[None]] | None = None
        self.draining: Callable[[], bool] = lambda: False
        self.retry_after = 5                                   # seconds, in the 503 Retry-After while draining
        self._acked: dict[tuple[str, int], tuple[SipRequest, Dest, TlsPeer | None]] = {}  # for 2xx retransmits
        self._ack_waiters: dict[tuple[str, int], asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.pending_byes: set[asyncio.Task[Any]] = set()                # BYE transactions still running (close waits)
        self.locator = Locator()                                     # RFC 3263 trunk lookup (GATEWAY_DNS_SERVER)
        layer.on_request = self._on_request
        layer.on_ack = self._on_ack
        layer.on_cancel = self._on_cancel
        layer.on_stray_response = self._on_stray_response

    # -- addressing ---------------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.transport.advertised_host

    @property
    def port(self) -> int:
        return self.transport.port

    def port_for(self, transport: str) -> int:
        """Where peers reach us over `transport`: the TLS listener for tls (when there is one), else the
        UDP/TCP port."""
        if transport.lower() == "tls":
            return getattr(self.transport, "tls_port", None) or self.transport.port
        return self.transport.port

    def contact(self, user: str = "gateway", transport: str = "udp") -> str:
        t = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{user}@{self.host}:{self.port_for(transport)}{t}>"

    def via(self, transport: str = "udp", branch: str | None = None) -> str:
        return self.transport.via(branch or new_branch(), transport)

    async def resolve(self, dest: Dest) -> tuple[str, int]:
        """The address of a host name through the locator's resolver (GATEWAY_DNS_SERVER, then /etc/hosts):
        the same DNS the trunk's SRV lookup used, so every request of a call resolves alike."""
        host, port = dest[0].strip("[]"), dest[1]
        if is_literal(host):
            return host, port
        try:
            return (await self.locator.addresses(host))[0], port
        except LocateError as e:
            raise RequestFailed(f"cannot resolve {host}: {e}") from None

    def spawn(self, coro: Coroutine[Any, Any, _T], name: str | None = None) -> asyncio.Task[_T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP UA task failed", exc_info=task.exception())

    async def close(self, bye_grace: float = 2.0) -> None:
        """Stop: BYEs already sent get `bye_grace` seconds for their answers (and UDP retransmissions), then every
        task of the UA is cancelled."""
        for s in list(self.sessions.values()):
            s.stop_timers()
        if self.pending_byes:
            await asyncio.wait(list(self.pending_byes), timeout=bye_grace)
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    # -- sending ------------------------------------------------------------------------------------------------
    async def send(self, req: SipRequest, dest: Dest, on_provisional: Callable[[SipResponse], None] | None = None,
                   on_txn: Callable[[Any], None] | None = None, *, tls: TlsPeer | None = None,
                   conn: Any = None) -> SipResponse:
        """One client transaction; raises RequestFailed on timeout (Timer B/F) or a transport error. `tls`: what
        a TLS peer must prove (default: a certificate for dest's host); `conn`: an open connection to reuse."""
        addr = await self.resolve(dest)
        if tls is None and dest[2].lower() == "tls" and not is_literal(dest[0].strip("[]")):
            tls = TlsPeer(dest[0].strip("[]"))
        try:
            txn = await self.layer.start_request(req, addr, dest[2], on_provisional=on_provisional, tls=tls,
                                                 conn=conn)
            if on_txn is not None:
                on_txn(txn)
            return await txn.final
        except TransactionTimeout:
            raise RequestFailed("timed out (no final response)", True) from None
        except (TransactionError, OSError) as e:
            failed = RequestFailed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            failed.tls_verdict = tls_verdict_of(e)
            raise failed from None

    async def send_authenticated(self, build: Callable[[int, list[tuple[str, str]]], SipRequest], dest: Dest,
                                 creds: Credentials | None, *, cseq: int = 1,
                                 on_provisional: Callable[[SipResponse], None] | None = None,
                                 on_request: Callable[[SipRequest], None] | None = None,
                                 on_txn: Callable[[Any], None] | None = None, tls: TlsPeer | None = None,
                                 conn: Any = None) -> tuple[SipRequest, SipResponse]:
        """Send `build(cseq, auth_headers)`; answer up to two 401/407 challenges (a second only when stale or for
        another realm/proxy). Returns the last request and its final response."""
        auth: list[tuple[str, str]] = []
        answered: set[str] = set()
        for _ in range(3):
            req = build(cseq, auth)
            if on_request is not None:
                on_request(req)
            resp = await self.send(req, dest, on_provisional, on_txn, tls=tls, conn=conn)
            if resp.status not in (401, 407) or creds is None:
                return req, resp
            header = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
            try:
                challenges = [digest.parse_challenge(v) for v in resp.headers.getlist(header)]
            except digest.DigestError:
                return req, resp
            if not challenges:
                return req, resp
            ch = max(challenges, key=lambda c: c.strength)
            key = f"{resp.status}:{ch.realm}"
            if key in answered and not ch.stale:
                return req, resp  # our credentials were refused
            answered.add(key)
            name = "Authorization" if resp.status == 401 else "Proxy-Authorization"
            value = digest.build_authorization(ch, req.method, req.uri, creds.auth_user, creds.password,
                                               body=req.body)
            auth = [(n, v) for n, v in auth if n != name] + [(name, value)]
            cseq += 1
        return req, resp

    def send_ack(self, ack: SipRequest, dest: Dest, tls: TlsPeer | None = None) -> None:
        """ACK for a 2xx goes straight to the transport (it is not a transaction, §17.1.1.3)."""
        self.spawn(self._send_raw(ack, dest, tls))

    def ack_2xx(self, ack: SipRequest, dest: Dest, tls: TlsPeer | None = None) -> None:
        """Send the ACK for a 2xx to our INVITE and keep it for 64·T1 (Timer M, RFC 6026), while retransmissions
        of that 2xx may still arrive and must be ACKed again; then forget it (kept forever, it grew per call)."""
        key = (ack.call_id, ack.cseq[0])
        self._acked[key] = (ack, dest, tls)
        asyncio.get_running_loop().call_later(64 * self.t1, self._acked.pop, key, None)
        self.send_ack(ack, dest, tls)

    async def _send_raw(self, msg: SipRequest, dest: Dest, tls: TlsPeer | None = None) -> None:
        try:
            addr = await self.resolve(dest)
            await self.layer.send_ack(msg, addr, dest[2], tls=tls)
        except Exception as e:  # noqa: BLE001 - logged, the dialog layer handles the consequences
            log.warning("could not send %s: %s", msg.method, e)

    # -- receiving ----------------------------------------------------------------------------------------------
    async def _on_request(self, req: SipRequest, txn: Any) -> None:
        try:
            await self._route(req, txn)
        except Exception:
            log.exception("SIP request handler failed", extra={"method": req.method, "sip_call_id": req.call_id})
            self.respond(txn, req, 500, "Server Internal Error")

    def respond(self, txn: Any, req: SipRequest, status: int, reason: str | None = None, *,
                to_tag: str | None = None, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        h = list(headers or [])
        if status >= 200 and not any(k.lower() == "server" for k, _ in h):
            h.append(("Server", self.user_agent))
        resp = make_response(req, status, reason, to_tag=to_tag or (new_tag() if status > 100 else None),
                             headers=h, body=body)
        txn.respond(resp)

    async def _route(self, req: SipRequest, txn: Any) -> None:
        method = req.method
        source = txn.source
        if not self._acceptable(req, txn):
            return
        if req.to_tag:
            session = self.sessions.get((req.call_id, req.to_tag, req.from_tag or ""))
            if session is None:
                if method == "OPTIONS":
                    self._answer_options(txn, req)
                    return
                self.respond(txn, req, 481, "Call/Transaction Does Not Exist")
                return
            if not session.dialog.accept_request(req, source):
                self.respond(txn, req, 500, "Server Internal Error", headers=[("Retry-After", "1")])
                return
            await session.handle(req, txn)
            return
        if method in ("INVITE", "OPTIONS") and self.draining():
            self.respond(txn, req, 503, "Service Unavailable", headers=[("Retry-After", str(self.retry_after))])
            return
        if method == "INVITE":
            if self.on_invite is None:
                self.respond(txn, req, 503, "Service Unavailable")
                return
            inv = IncomingInvite(self, req, txn, source)
            if req.headers.get("Replaces") is not None:
                matched = self._match_replaces(req)
                if not isinstance(matched, SipSession):
                    self.respond(txn, req, *matched)
                    return
                inv.replaces = matched
            self.invites[req.branch or ""] = inv
            try:
                await self.on_invite(inv)
            finally:
                if inv.finished:
                    self.invites.pop(req.branch or "", None)
            return
        if method == "OPTIONS":
            self._answer_options(txn, req)
            return
        if method == "REGISTER" and self.on_register is not None:
            await self.on_register(req, txn)
            return
        if method == "BYE":
            self.respond(txn, req, 481, "Call/Transaction Does Not Exist")
            return
        self.respond(txn, req, 405, "Method Not Allowed", headers=[("Allow", ALLOW)])

    def _match_replaces(self, req: SipRequest) -> SipSession | tuple[int, str]:
        """The dialog an INVITE's Replaces names (RFC 3891 §3), or the answer refusing it: 400 unreadable, 481 no
        such dialog (also an early one: only confirmed dialogs are kept here), 603 already ended, 486 when it
        asks for an early dialog only. Whether the sender may replace it is the INVITE handler's check."""
        try:
            replaces = Replaces.parse(req.headers.getlist("Replaces"))
        except ReplacesError as e:
            return 400, f"Bad Replaces header: {e}"[:100]
        session = self.sessions.get(replaces.dialog_id)
        if session is None:
            return 481, "Call/Transaction Does Not Exist"
        if session.ended.is_set():
            return 603, "Declined"
        if replaces.early_only:
            return 486, "Busy Here"
        return session

    def _acceptable(self, req: SipRequest, txn: Any) -> bool:
        """RFC 3261 §8.2.2: a Request-URI scheme we cannot handle gets 416 (§8.2.2.1), an option tag in Require
        that we do not implement 420 listing it in Unsupported (§8.2.2.3) — INVITE included: answering 200 and
        ignoring an extension the caller depends on is worse than refusing. (ACK and CANCEL never come here:
        the transaction layer handles them, and §8.2.2.3 exempts them.)"""
        scheme = req.uri.partition(":")[0].lower()
        if scheme not in URI_SCHEMES:
            self.respond(txn, req, 416, "Unsupported URI Scheme")
            return False
        unknown = [t for t in req.headers.getlist("Require") if t.strip() and t.strip().lower() not in EXTENSIONS]
        if unknown:
            self.respond(txn, req, 420, "Bad Extension", headers=[("Unsupported", ", ".join(unknown))])
            return False
        return True

    def _answer_options(self, txn: Any, req: SipRequest) -> None:
        self.respond(txn, req, 200, "OK", headers=[("Allow", ALLOW), ("Accept", "application/sdp"),
                                                   ("Supported", SUPPORTED), ("Contact", self.contact())])

    def _on_cancel(self, txn: Any) -> None:
        """The layer answered a CANCEL (200) and our INVITE (487): the caller gave up while it rang."""
        inv = self.invites.pop(txn.request.branch or "", None)
        if inv is not None:
            inv.finished = True
            inv.cancelled.set()

    def _on_ack(self, ack: SipRequest, *_: Any) -> None:
        ev = self._ack_waiters.get((ack.call_id, ack.cseq[0]))
        if ev is not None:
            ev.set()
        session = self.sessions.get((ack.call_id, ack.to_tag or "", ack.from_tag or ""))
        if session is not None:
            session.on_ack(ack)

    def _on_stray_response(self, resp: SipResponse, *_: Any) -> None:
        """A 2xx retransmission after our transaction ended: our ACK was lost, send it again (§13.2.2.4)."""
        try:
            cseq, method = resp.cseq
        except Exception:  # noqa: BLE001 - not ours to answer
            return
        if method == "INVITE" and 200 <= resp.status < 300:
            sent = self._acked.get((resp.call_id, cseq))
            if sent is not None:
                self.send_ack(*sent)

    async def answer_2xx(self, resp: SipResponse, txn: Any, on_sent: Callable[[], None] | None = None) -> bool:
        """Send a 2xx to an INVITE (the transaction layer retransmits it) and wait up to 64·T1 for the ACK;
        `on_sent` runs as soon as the 2xx is handed to the transport, before the wait."""
        key = (resp.call_id, resp.cseq[0])
        ev = self._ack_waiters[key] = asyncio.Event()
        try:
            if not txn.respond(resp):
                return False
            if on_sent is not None:
                on_sent()
            try:
                await asyncio.wait_for(ev.wait(), 64 * self.t1 + 1)
                return True
            except TimeoutError:
                return False
        finally:
            self._ack_waiters.pop(key, None)


class IncomingInvite:
    """An INVITE outside a dialog that we are answering."""

    def __init__(self, ua: UserAgent, request: SipRequest, txn: Any, source: tuple[str, int] | None) -> None:
        self.ua = ua
        self.request = request
        self.txn = txn
        self.source = source or txn.source
        self.transport = getattr(txn.conn, "protocol", None) or request.top_via.transport.lower()
        self.local_tag = new_tag()
        self.cancelled = asyncio.Event()
        self.finished = False
        self.session: SipSession | None = None
        #: the confirmed dialog of ours this INVITE's Replaces header names (RFC 3891), already matched
        self.replaces: SipSession | None = None

    @property
    def source_ip(self) -> str:
        """The address that sent the INVITE first (a trusted proxy's X-Gateway-Source, else the peer's): what
        trunk authentication and the password-guessing ban look at."""
        origin = getattr(self.txn, "origin", None)
        return str(origin[0]) if origin else self.source[0]

    def respond(self, status: int, reason: str | None = None, headers: list[tuple[str, str]] | None = None,
                body: bytes = b"", content_type: str | None = None) -> None:
        if self.finished:
            return
        h = list(headers or [])
        if status > 100 and status < 300:
            h.append(("Contact", self.ua.contact(transport=self.transport)))
            h += _record_route(self.request)
        if body and content_type:
            h.append(("Content-Type", content_type))
        if status >= 200:
            self.finished = True
            self.ua.invites.pop(self.request.branch or "", None)
        self.ua.respond(self.txn, self.request, status, reason, to_tag=self.local_tag, headers=h, body=body)

    def reject(self, status: int, reason: str | None = None, headers: list[tuple[str, str]] | None = None) -> None:
        self.respond(status, reason, headers)

    async def accept(self, sdp: bytes, headers: list[tuple[str, str]] | None = None, *,
                     on_sent: Callable[[], None] | None = None) -> SipSession:
        """Send 200 with our SDP and wait for the ACK; raises RequestFailed (after a BYE) when none comes.
        `on_sent` runs right after the 200 left, before the ACK: the caller may send RTP as soon as it has our
        answer (RFC 3264 §6), so media that must not miss it starts there."""
        if self.finished:
            raise RequestFailed("INVITE already answered or cancelled")
        req = self.request
        dialog = Dialog.as_uas(req, self.local_tag, self.source, self.transport)
        session = SipSession(self.ua, dialog, "uas", local_sdp=sdp, remote_sdp=req.body or None, invite=req)
        h = [("Contact", self.ua.contact(transport=self.transport)), ("Allow", ALLOW), ("Supported", SUPPORTED),
             ("Content-Type", "application/sdp"), ("Server", self.ua.user_agent), *_record_route(req)]
        h += session.negotiate_timer(req)
        h += list(headers or [])
        resp = make_response(req, 200, "OK", to_tag=self.local_tag, headers=h, body=sdp)
        self.finished = True
        self.ua.invites.pop(req.branch or "", None)
        self.ua.sessions[dialog.id] = session
        session.conn = self.txn.conn if self.transport != "udp" else None
        self.session = session
        if not await self.ua.answer_2xx(resp, self.txn, on_sent):
            session.send_bye(reason_header(408, "ACK not received"))
            raise RequestFailed("no ACK for our 200 OK", timed_out=True)
        session.start_timer()
        return session


def _record_route(request: SipRequest) -> list[tuple[str, str]]:
    """RFC 3261 §12.1.1: a response that establishes a dialog (18x, 2xx to INVITE) carries the request's
    Record-Route values, in order, so the caller routes its ACK/BYE through the same proxies (e.g. Kamailio)."""
    return [("Record-Route", v) for v in request.headers.getlist("Record-Route")]


@dataclass
class InviteResult:
    """How an outbound INVITE ended: a session (answered) or the final response / error that ended it."""

    session: SipSession | None = None
    response: SipResponse | None = None
    error: str = ""
    timed_out: bool = False
    cancelled: bool = False
    tls_verdict: str | None = None      # the failed TLS check when that is why there was no answer

    @property
    def status_line(self) -> str:
        if self.response is not None:
            return f"{self.response.status} {self.response.reason}".strip()
        return self.error


def outcome_for(status: int) -> str:
    """Call-log status for a final non-2xx answer to our INVITE."""
    if status in (486, 600):
        return "busy"
    if status in (408, 480, 487):
        return "no-answer"
    if status in (603, 607, 608):
        return "rejected"
    return "failed"


def _fail_over(result: InviteResult) -> bool:
    """Whether RFC 3263 §4.3 sends the request to the next server: no answer at all, or 503 Service Unavailable."""
    if result.session is not None or result.cancelled:
        return False
    return result.response.status == 503 if result.response is not None else True


class OutgoingInvite:
    """An INVITE we send: authentication, provisional responses, CANCEL, ACK."""

    def __init__(self, ua: UserAgent, *, request_uri: str, from_addr: NameAddr, to_addr: NameAddr, sdp: bytes,
                 dest: Dest, creds: Credentials | None = None, route: list[str] | None = None,
                 headers: list[tuple[str, str]] | None = None,
                 on_provisional: Callable[[SipResponse], None] | None = None,
                 alternates: list[Dest] | None = None, tls: TlsPeer | None = None) -> None:
        self.ua = ua
        self.request_uri = request_uri
        self.from_addr = from_addr.with_tag(new_tag())
        self.to_addr = to_addr
        self.sdp = sdp
        self.dest = dest
        #: further servers of the trunk (DNS SRV order), tried when one times out, is unreachable or says 503
        self.alternates = list(alternates or [])
        self.creds = creds
        self.tls = tls                  # what a TLS trunk must prove (its domain, RFC 5922), for every request
        self.route = list(route or [])
        self.headers = list(headers or [])
        self.on_provisional = on_provisional
        self.call_id = new_call_id(ua.host)
        self.current: SipRequest | None = None
        self.provisional = asyncio.Event()
        self.early_sdp: bytes | None = None
        self.txn: Any = None
        self._cancel_requested = False

    def _build(self, cseq: int, auth: list[tuple[str, str]]) -> SipRequest:
        h: list[tuple[str, str]] = [("Via", self.ua.via(self.dest[2])), ("Max-Forwards", "70")]
        h += [("Route", r) for r in self.route]
        h += [("From", str(self.from_addr)), ("To", str(self.to_addr)), ("Call-ID", self.call_id),
              ("CSeq", f"{cseq} INVITE"), ("Contact", self.ua.contact(transport=self.dest[2])),
              ("Allow", ALLOW), ("Supported", SUPPORTED), ("User-Agent", self.ua.user_agent)]
        h += self.headers + auth
        h.append(("Content-Type", "application/sdp"))
        return SipRequest("INVITE", self.request_uri, h, self.sdp)

    def _provisional(self, resp: SipResponse) -> None:
        if resp.status > 100:
            self.provisional.set()
            if resp.body and (resp.content_type or "") == "application/sdp":
                self.early_sdp = resp.body
        if self.on_provisional is not None:
            try:
                self.on_provisional(resp)
            except Exception:
                log.exception("provisional response handler failed")

    def _on_request(self, req: SipRequest) -> None:
        self.current = req
        self.provisional.clear()

    def _on_txn(self, txn: Any) -> None:
        self.txn = txn
        if self._cancel_requested:
            self.ua.spawn(self._send_cancel(txn))

    async def run(self, ring_timeout: float = 60.0) -> InviteResult:
        """Send the INVITE; CANCEL after `ring_timeout` seconds without a final answer. When a server does not
        answer (timeout, transport error) or answers 503, the same request with a new branch goes to the next of
        `alternates` (RFC 3263 §4.3), within the same `ring_timeout`."""
        loop = asyncio.get_running_loop()
        end = loop.time() + ring_timeout
        for nxt in self.alternates:
            result = await self._attempt(max(end - loop.time(), 0.1))
            if self._cancel_requested or not _fail_over(result) or loop.time() >= end:
                return result
            log.info("INVITE to %s:%s failed (%s): trying %s:%s", self.dest[0], self.dest[1],
                     result.status_line, nxt[0], nxt[1])
            self.dest, self.txn, self.current = nxt, None, None
            self.provisional.clear()
        return await self._attempt(max(end - loop.time(), 0.1))

    async def _attempt(self, ring_timeout: float) -> InviteResult:
        task = asyncio.ensure_future(self.ua.send_authenticated(
            self._build, self.dest, self.creds, on_provisional=self._provisional, on_request=self._on_request,
            on_txn=self._on_txn, tls=self.tls))
        try:
            done, _ = await asyncio.wait({task}, timeout=ring_timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        timed_out = not done
        if timed_out:
            self.cancel()
            done, _ = await asyncio.wait({task}, timeout=32 * self.ua.t1 + 2)
            if not done:
                task.cancel()
                return InviteResult(error="no answer (ring timeout)", timed_out=True, cancelled=True)
        try:
            req, resp = task.result()
        except RequestFailed as e:
            return InviteResult(error=e.reason, timed_out=e.timed_out, tls_verdict=e.tls_verdict)
        if 200 <= resp.status < 300:
            dialog = Dialog.as_uac(req, resp, transport=self.dest[2])
            self._ack(dialog, req)
            session = SipSession(self.ua, dialog, "uac", local_sdp=self.sdp, remote_sdp=resp.body or self.early_sdp,
                                 invite=req)
            session.tls = self.tls
            if self.dest[2] != "udp" and self.txn is not None:
                session.conn = self.ua.transport.connection(self.dest[2], self.txn.addr)
            self.ua.sessions[dialog.id] = session
            if self._cancel_requested or timed_out:  # 2xx won the race with our CANCEL: end it at once
                session.send_bye(reason_header(487, "Request Terminated"))
                return InviteResult(response=resp, error="cancelled", timed_out=timed_out, cancelled=True)
            session.negotiate_timer_uac(resp)
            session.start_timer()
            return InviteResult(session=session, response=resp)
        return InviteResult(response=resp, timed_out=timed_out, cancelled=self._cancel_requested)

    def _ack(self, dialog: Dialog, req: SipRequest) -> None:
        via_host, via_port = self.ua.host, self.ua.port_for(dialog.transport)
        ack = dialog.new_request("ACK", (via_host, via_port), cseq=req.cseq[0],
                                 headers=[("User-Agent", self.ua.user_agent)])
        # ACK follows the dialog's route set; without one it goes where the INVITE went (proxy / trunk)
        dest = self.dest if not dialog.route_set and self.route else dialog.next_hop()
        if not dialog.route_set and not self.route:
            dest = (*dialog.next_hop()[:2], self.dest[2])
        self.ua.ack_2xx(ack, dest, self.tls)

    def cancel(self) -> None:
        """CANCEL the INVITE (the transaction sends it once a provisional has arrived, §9.1)."""
        if self._cancel_requested:
            return
        self._cancel_requested = True
        if self.txn is not None:
            self.ua.spawn(self._send_cancel(self.txn))

    async def _send_cancel(self, txn: Any) -> None:
        try:
            await txn.cancel(headers=[("Reason", reason_header(487, "Request Terminated"))])
        except TransactionError as e:
            log.info("CANCEL not sent: %s", e)


class SipSession:
    """A confirmed call dialog and what can happen inside it."""

    def __init__(self, ua: UserAgent, dialog: Dialog, role: str, *, local_sdp: bytes, remote_sdp: bytes | None,
                 invite: SipRequest) -> None:
        self.ua = ua
        self.dialog = dialog
        self.role = role                    # "uas" (they called us) | "uac" (we called)
        self.local_sdp = local_sdp
        self.remote_sdp = remote_sdp
        self.invite = invite
        self.creds: Credentials | None = None
        #: TLS: what the peer must prove on a connection we open for this dialog, and the dialog's open
        #: connection (in-dialog requests go over it while it lasts, as the peer expects on TCP/TLS)
        self.tls: TlsPeer | None = None
        self.conn: Any = None
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.on_bye: Callable[[SipRequest], Any] | None = None
        self.on_offer: Callable[[bytes], bytes | None] | None = None  # remote offer → our answer (None → 488)
        self.on_notify: Callable[[SipRequest], None] | None = None
        self.on_dtmf: Callable[[str, int], None] | None = None
        self.on_timer_expired: Callable[[], Any] | None = None
        self.session_expires: int | None = None
        self.we_refresh = False
        self._timer: asyncio.TimerHandle | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._refer_waiters: list[asyncio.Future[tuple[int, str]]] = []
        self.refreshes = 0

    @property
    def call_id(self) -> str:
        return self.dialog.call_id

    # -- RFC 4028 session timers ------------------------------------------------------------------------------
    def negotiate_timer(self, invite: SipRequest) -> list[tuple[str, str]]:
        """Headers for our 2xx to an INVITE/UPDATE carrying Session-Expires (we are the UAS)."""
        se, refresher = _session_expires(invite)
        if se is None:
            return []
        se = max(se, MIN_SE)
        supported = "timer" in ",".join(invite.headers.getlist("Supported")).lower()
        if not supported:
            refresher = "uas"       # a proxy asked for timers the caller cannot do: we refresh
        refresher = refresher or "uac"
        self.session_expires = se
        self.we_refresh = (refresher == "uas") == (self.role == "uas")
        h = [("Session-Expires", f"{se};refresher={refresher}")]
        if supported:
            h.append(("Require", "timer"))
        return h

    def negotiate_timer_uac(self, resp: SipResponse) -> None:
        se, refresher = _session_expires(resp)
        if se is not None:
            self.session_expires = se
            self.we_refresh = refresher == "uac"

    def start_timer(self) -> None:
        self.stop_timers()
        if not self.session_expires or self.ended.is_set():
            return
        loop = asyncio.get_running_loop()
        if self.we_refresh:
            self._timer = loop.call_later(self.session_expires / 2, self._refresh_now)
        else:  # §10: BYE if no refresh arrives before expiry minus min(32, SE/3)
            self._timer = loop.call_later(self.session_expires - min(32, self.session_expires / 3), self._expired)

    def stop_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refresh_now(self) -> None:
        self._refresh_task = self.ua.spawn(self._send_refresh())

    async def _send_refresh(self) -> None:
        allow = ",".join(self.invite.headers.getlist("Allow")).upper()
        method = "UPDATE" if "UPDATE" in allow else "INVITE"
        hdrs = [("Session-Expires", f"{self.session_expires};refresher={'uas' if self.role == 'uas' else 'uac'}"),
                ("Supported", SUPPORTED)]
        try:
            if method == "UPDATE":
                resp = await self.request("UPDATE", hdrs)
            else:
                resp = await self.reinvite(self.local_sdp, hdrs)
        except RequestFailed as e:
            resp = None
            log.warning("session refresh failed: %s", e.reason)
        if resp is not None and resp.status < 300:
            self.refreshes += 1
            self.start_timer()
        elif resp is not None and resp.status in (408, 481):
            await self._expired_async()
        else:
            self.start_timer()

    def _expired(self) -> None:
        self.ua.spawn(self._expired_async())

    async def _expired_async(self) -> None:
        if self.ended.is_set():
            return
        self.send_bye(reason_header(408, "Session timer expired"))
        if self.on_timer_expired is not None:
            res = self.on_timer_expired()
            if asyncio.iscoroutine(res):
                await res

    # -- requests we receive ----------------------------------------------------------------------------------
    def on_ack(self, ack: SipRequest) -> None:
        if ack.body and self.on_offer is not None and (ack.content_type or "") == "application/sdp":
            self.remote_sdp = ack.body
            self.on_offer(ack.body)

    async def handle(self, req: SipRequest, txn: Any) -> None:
        m = req.method
        ua = self.ua
        if m == "BYE":
            ua.respond(txn, req, 200, "OK")
            if self.ended.is_set():
                return
            self._ended(parse_reason(req.headers.get("Reason")) or "BYE")
            if self.on_bye is not None:
                res = self.on_bye(req)
                if asyncio.iscoroutine(res):
                    await res
            return
        if m in ("INVITE", "UPDATE"):
            await self._offer(req, txn)
            return
        if m == "NOTIFY":
            ua.respond(txn, req, 200, "OK")
            self._notify(req)
            return
        if m == "INFO":
            ua.respond(txn, req, 200, "OK")
            self._info(req)
            return
        if m == "OPTIONS":
            ua._answer_options(txn, req)
            return
        if m == "REFER":
            ua.respond(txn, req, 603, "Decline", headers=[("Warning", '399 gateway "transfer requests are not '
                                                                      'accepted from the trunk"')])
            return
        if m == "PRACK":
            ua.respond(txn, req, 200, "OK")
            return
        ua.respond(txn, req, 405, "Method Not Allowed", headers=[("Allow", ALLOW)])

    async def _offer(self, req: SipRequest, txn: Any) -> None:
        """re-INVITE / UPDATE: hold, unhold, codec change or a session-timer refresh (RFC 4028 §9)."""
        ua = self.ua
        se, _ = _session_expires(req)
        if se is not None and se < MIN_SE:
            ua.respond(txn, req, 422, "Session Interval Too Small", headers=[("Min-SE", str(MIN_SE))])
            return
        answer = self.local_sdp
        if req.body:
            if self.on_offer is None:
                ua.respond(txn, req, 488, "Not Acceptable Here")
                return
            result = self.on_offer(req.body)
            if result is None:
                ua.respond(txn, req, 488, "Not Acceptable Here")
                return
            self.remote_sdp = req.body
            answer = self.local_sdp = result
        elif req.method == "UPDATE":
            answer = b""
        h = [("Contact", ua.contact(transport=self.dialog.transport)), ("Allow", ALLOW), ("Supported", SUPPORTED)]
        h += self.negotiate_timer(req)
        if answer:
            h.append(("Content-Type", "application/sdp"))
        resp = make_response(req, 200, "OK", headers=h + [("Server", ua.user_agent)], body=answer)
        if se is not None or self.session_expires:
            self.refreshes += 1
        self.start_timer()
        if req.method == "INVITE":
            ua.spawn(ua.answer_2xx(resp, txn))
        else:
            txn.respond(resp)

    def _notify(self, req: SipRequest) -> None:
        if self.on_notify is not None:
            self.on_notify(req)
        event = (req.headers.get("Event") or "").split(";", 1)[0].strip().lower()
        if event != "refer":
            return
        m = re.match(rb"\s*SIP/2\.0\s+(\d{3})\s*([^\r\n]*)", req.body or b"")
        state = (req.headers.get("Subscription-State") or "").lower()
        if m:
            status, text = int(m.group(1)), m.group(2).decode(errors="replace").strip()
        elif state.startswith("terminated"):
            status, text = 487, "Subscription terminated"
        else:
            return
        if status >= 200 or state.startswith("terminated"):
            for fut in self._refer_waiters:
                if not fut.done():
                    fut.set_result((status, text))

    def _info(self, req: SipRequest) -> None:
        ctype = req.content_type or ""
        body = (req.body or b"").decode(errors="replace")
        digit = None
        duration = 250
        if ctype == "application/dtmf-relay":
            m = re.search(r"Signal\s*=\s*([0-9A-Da-d*#])", body)
            d = re.search(r"Duration\s*=\s*(\d+)", body)
            digit = m.group(1).upper() if m else None
            duration = int(d.group(1)) if d else duration
        elif ctype == "application/dtmf":
            digit = body.strip()[:1].upper() or None
        if digit and self.on_dtmf is not None:
            self.on_dtmf(digit, duration)

    # -- requests we send -------------------------------------------------------------------------------------
    async def _dest(self) -> Dest:
        """The next hop (first route, else the remote target) located by RFC 3263 like the trunk itself: a
        host name without a port goes through NAPTR/SRV, sips: means TLS."""
        try:
            targets = await self.ua.locator.locate_uri(self.dialog.next_hop_uri(), self.dialog.transport)
        except (LocateError, ValueError) as e:
            raise RequestFailed(f"next hop: {e}") from None
        return targets[0].dest

    def _conn(self) -> Any:
        conn = self.conn
        return conn if conn is not None and conn.is_open else None

    def _tls(self) -> TlsPeer | None:
        """What a new TLS connection for this dialog must prove: the trunk's (set when we placed the call), else
        the next hop URI's host name (RFC 5922 §4; an address is checked as an address)."""
        if self.tls is not None:
            return self.tls
        host = SipUri.parse(self.dialog.next_hop_uri()).host.strip("[]")
        return None if is_literal(host) else TlsPeer(host)

    def _via(self) -> tuple[str, int]:
        return self.ua.host, self.ua.port_for(self.dialog.transport)

    async def request(self, method: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                      content_type: str | None = None) -> SipResponse:
        """An in-dialog request (new CSeq each time, digest answered with the trunk's credentials)."""
        dest = await self._dest()

        def build(cseq: int, auth: list[tuple[str, str]]) -> SipRequest:
            return self.dialog.new_request(method, self._via(), cseq=cseq,
                                           headers=[("User-Agent", self.ua.user_agent), *(headers or []), *auth],
                                           body=body, content_type=content_type)

        _, resp = await self.ua.send_authenticated(build, dest, self.creds, cseq=self.dialog.next_cseq(),
                                                   on_request=self._track_cseq, tls=self._tls(), conn=self._conn())
        return resp

    def _track_cseq(self, req: SipRequest) -> None:
        self.dialog.local_cseq = max(self.dialog.local_cseq, req.cseq[0])

    def send_bye(self, reason: str | None = None) -> asyncio.Task[SipResponse | None] | None:
        """Hang up with an RFC 3326 Reason, without waiting for the answer.

        RFC 3261 §15: the session is over once the BYE is sent, so it ends here, at once; the BYE transaction
        (up to 64·T1 = 32 s when the peer never answers) finishes in a background task of the UA (cancelled on
        close). Returns that task, None when the session had already ended."""
        if self.ended.is_set():
            return None
        self._ended("local BYE")
        task = self.ua.spawn(self._bye_transaction(reason))
        self.ua.pending_byes.add(task)
        task.add_done_callback(self.ua.pending_byes.discard)
        return task

    async def bye(self, reason: str | None = None) -> SipResponse | None:
        """`send_bye()` and wait for the response (None if the peer never answered): for callers that need it."""
        task = self.send_bye(reason)
        return None if task is None else await task

    async def _bye_transaction(self, reason: str | None) -> SipResponse | None:
        try:
            return await self.request("BYE", [("Reason", reason)] if reason else [])
        except RequestFailed as e:
            log.info("BYE not answered: %s", e.reason, extra={"sip_call_id": self.call_id})
            return None

    async def reinvite(self, sdp: bytes, headers: list[tuple[str, str]] | None = None) -> SipResponse:
        dest = await self._dest()
        self.local_sdp = sdp

        def build(cseq: int, auth: list[tuple[str, str]]) -> SipRequest:
            return self.dialog.new_request("INVITE", self._via(), cseq=cseq, headers=[
                ("Contact", self.ua.contact(transport=self.dialog.transport)), ("Allow", ALLOW),
                ("User-Agent", self.ua.user_agent), *(headers or []), *auth], body=sdp,
                content_type="application/sdp")

        req, resp = await self.ua.send_authenticated(build, dest, self.creds, cseq=self.dialog.next_cseq(),
                                                     on_request=self._track_cseq, tls=self._tls(), conn=self._conn())
        if 200 <= resp.status < 300:
            ack = self.dialog.new_request("ACK", self._via(), cseq=req.cseq[0])
            self.ua.ack_2xx(ack, dest, self._tls())
            if resp.body:
                self.remote_sdp = resp.body
        return resp

    async def refer(self, refer_to: str, *, timeout: float = 60.0,
                    referred_by: str | None = None) -> tuple[int, str]:
        """Blind transfer (RFC 3515): REFER, then wait for the NOTIFY sipfrag with a final status.

        Returns (status, reason) of the transfer target's answer, or of the REFER itself when refused.
        """
        fut: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._refer_waiters.append(fut)
        try:
            h = [("Refer-To", f"<{refer_to}>"), ("Referred-By", referred_by or str(self.dialog.local)),
                 ("Contact", self.ua.contact(transport=self.dialog.transport))]
            resp = await self.request("REFER", h)
            if resp.status >= 300:
                return resp.status, resp.reason
            try:
                return await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                return 408, "No NOTIFY with a final transfer status"
        finally:
            self._refer_waiters.remove(fut)

    async def send_info_dtmf(self, digit: str, duration_ms: int = 160) -> SipResponse:
        body = f"Signal={digit}\r\nDuration={duration_ms}\r\n".encode()
        return await self.request("INFO", body=body, content_type="application/dtmf-relay")

    def _ended(self, reason: str) -> None:
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.ended.set()
        self.stop_timers()
        self.dialog.state = "terminated"
        for fut in self._refer_waiters:
            if not fut.done():
                fut.set_result((487, "Call ended"))
        # keep the dialog findable for a while: a BYE crossing ours still gets its 200
        asyncio.get_running_loop().call_later(32 * self.ua.t1, self._forget)

    def release_callbacks(self) -> None:
        """Drop the handlers the call wired in (they reference the call) once the call is over."""
        self.on_bye = self.on_offer = self.on_notify = self.on_dtmf = self.on_timer_expired = None

    def _forget(self) -> None:
        if self.ua.sessions.get(self.dialog.id) is self:
            del self.ua.sessions[self.dialog.id]
